//! Usage records: per (token, client IP, hour) counters gathered in memory on the request path
//! and written behind to the store: the IP records of SPEC §3 and the hourly history of §12
//! (admitted requests and refusals of a known token by reason).
//!
//! Recording is one dashmap update (no await, no store); the hour is part of the key, so a
//! pair used across an hour boundary is two entries and each lands in its own hourly row. A flush task drains the pending map at
//! least every `usage.flush_interval` and once more at shutdown; a failed flush puts the batch
//! back so nothing is lost while the store is briefly unavailable. The pending map is bounded:
//! past [`MAX_PENDING`] distinct pairs, new pairs are dropped (and counted) rather than
//! letting a flood of addresses grow memory without limit.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::clock::Timestamp;
use crate::model::{hour_of, Denial, Refusal, TokenId, UsageDelta, HOUR_MS};
use crate::store::{Store, StoreResult};

/// Distinct (token, IP) pairs held between flushes at most.
pub const MAX_PENDING: usize = 1_000_000;
/// New IP records that refusals (blocked, not allowed) may create per token per hour (SPEC §3),
/// so a client rotating addresses cannot flush a token's real history.
pub const MAX_NEW_DENIED_PER_HOUR: u32 = 1_000;

/// What a pending entry counts: one token, one client IP (`None`: refusals past the token's
/// cap of new pairs, kept for its own hourly row only), one hour (its start, ms).
type Key = (TokenId, Option<IpAddr>, i64);

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    requests: u64,
    denied: u64,
    /// ms; 0 = none in this batch.
    first_used: i64,
    last_used: i64,
    /// The latest refusal (ms; 0 = none) and its reason.
    denied_at: i64,
    denied_error: Option<Denial>,
    /// Refusals by reason ([`Refusal::index`]), for the hourly history.
    refused: [u32; Refusal::COUNT],
}

impl Counters {
    fn merge(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.denied += o.denied;
        if o.first_used != 0 && (self.first_used == 0 || o.first_used < self.first_used) {
            self.first_used = o.first_used;
        }
        self.last_used = self.last_used.max(o.last_used);
        if o.denied_at >= self.denied_at && o.denied_error.is_some() {
            self.denied_at = o.denied_at;
            self.denied_error = o.denied_error;
        }
        for (a, b) in self.refused.iter_mut().zip(o.refused) {
            *a = a.saturating_add(b);
        }
    }

    fn refuse(&mut self, why: Refusal) {
        let n = &mut self.refused[why.index()];
        *n = n.saturating_add(1);
    }
}

pub struct UsageRecorder {
    pending: DashMap<Key, Counters>,
    dropped: AtomicU64,
    flush_errors: AtomicU64,
    max_ips_per_token: usize,
    /// Per token: the start of its current hour (ms) and the new pairs refusals made in it.
    new_denied: DashMap<TokenId, (i64, u32)>,
    /// Refusals not recorded because their token's hourly cap was reached.
    denied_capped: AtomicU64,
}

impl UsageRecorder {
    pub fn new(max_ips_per_token: usize) -> UsageRecorder {
        UsageRecorder {
            pending: DashMap::new(),
            dropped: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            max_ips_per_token,
            new_denied: DashMap::new(),
            denied_capped: AtomicU64::new(0),
        }
    }

    /// Records a forwarded request.
    pub fn record_use(&self, token_id: TokenId, ip: IpAddr, now: Timestamp) {
        self.update((token_id, Some(ip), hour_of(now).0), |c| {
            c.requests += 1;
            if c.first_used == 0 {
                c.first_used = now.0;
            }
            c.last_used = c.last_used.max(now.0);
        });
    }

    /// Records a request refused because the IP is blocked for this token or outside its
    /// allow-list. A pair not pending yet counts against the token's hourly cap of new
    /// records ([`MAX_NEW_DENIED_PER_HOUR`]); past it, such refusals are counted only in
    /// [`UsageRecorder::denied_capped`]. (A pair already flushed to the store counts as new
    /// here too: the cap errs on the side of fewer writes.)
    pub fn record_denied(&self, token_id: TokenId, ip: IpAddr, why: Denial, now: Timestamp) {
        self.refusal(token_id, ip, now, |c: &mut Counters| {
            c.denied += 1;
            if now.0 >= c.denied_at {
                c.denied_at = now.0;
                c.denied_error = Some(why);
            }
            c.refuse(why.into());
        });
    }

    /// Records any other refusal of a known token (SPEC §12: expired, inactive, no route,
    /// access denied, rate limited) for the hourly history; it makes no IP record (the
    /// flush adds it to the IP's hourly row only if the IP has one). New pairs count against
    /// the same hourly cap as [`UsageRecorder::record_denied`]'s.
    pub fn record_refused(&self, token_id: TokenId, ip: IpAddr, why: Refusal, now: Timestamp) {
        self.refusal(token_id, ip, now, |c: &mut Counters| c.refuse(why));
    }

    /// A refusal: on its pending pair, or on a new pair within the token's hourly cap, else
    /// on the token's own entry for the hour (counted in `denied_capped`).
    fn refusal(&self, token_id: TokenId, ip: IpAddr, now: Timestamp, f: impl Fn(&mut Counters)) {
        let hour = hour_of(now).0;
        if let Some(mut c) = self.pending.get_mut(&(token_id, Some(ip), hour)) {
            f(&mut c);
            return;
        }
        let admitted = {
            let mut w = self.new_denied.entry(token_id).or_insert((now.0, 0));
            if now.0 - w.0 >= HOUR_MS || now.0 < w.0 {
                *w = (now.0, 0);
            }
            w.1 < MAX_NEW_DENIED_PER_HOUR && {
                w.1 += 1;
                true
            }
        };
        if admitted {
            self.update((token_id, Some(ip), hour), f);
        } else {
            self.denied_capped.fetch_add(1, Ordering::Relaxed);
            // Still a refusal of the token: its hourly row counts it (no denied count, no
            // IP: nothing that would make or grow a record).
            self.update((token_id, None, hour), |c| {
                let mut one = Counters::default();
                f(&mut one);
                for (a, b) in c.refused.iter_mut().zip(one.refused) {
                    *a = a.saturating_add(b);
                }
            });
        }
    }

    /// Refusals not recorded because their token had made its hourly share of new records.
    pub fn denied_capped(&self) -> u64 {
        self.denied_capped.load(Ordering::Relaxed)
    }

    /// Drops the hourly windows that have ended (a background tick calls it: bounded memory).
    pub fn prune_denied_windows(&self, now: Timestamp) {
        self.new_denied
            .retain(|_, (start, _)| now.0 - *start < HOUR_MS && now.0 >= *start);
    }

    fn update(&self, key: Key, f: impl FnOnce(&mut Counters)) {
        if let Some(mut c) = self.pending.get_mut(&key) {
            f(&mut c);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        f(&mut self.pending.entry(key).or_default());
    }

    /// Pairs waiting for the next flush.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records dropped because the pending map was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Flushes that failed (and were retried later).
    pub fn flush_errors(&self) -> u64 {
        self.flush_errors.load(Ordering::Relaxed)
    }

    /// Writes everything pending to the store. On failure the batch is merged back and the
    /// error returned; the next flush retries it.
    pub async fn flush(&self, store: &dyn Store) -> StoreResult<usize> {
        let mut taken: Vec<(Key, Counters)> = Vec::new();
        self.pending.retain(|k, v| {
            taken.push((*k, *v));
            false
        });
        if taken.is_empty() {
            return Ok(0);
        }
        let batch: Vec<UsageDelta> = taken
            .iter()
            .map(|((id, ip, hour), c)| UsageDelta {
                token_id: *id,
                ip: *ip,
                hour: Timestamp(*hour),
                refused: c.refused.map(u64::from),
                requests: c.requests,
                denied: c.denied,
                first_used_at: (c.first_used != 0).then_some(Timestamp(c.first_used)),
                last_used_at: (c.last_used != 0).then_some(Timestamp(c.last_used)),
                denied_at: c.denied_error.map(|_| Timestamp(c.denied_at)),
                denied_error: c.denied_error,
            })
            .collect();
        match store.flush_usage(&batch, self.max_ips_per_token).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                self.flush_errors.fetch_add(1, Ordering::Relaxed);
                for (k, c) in taken {
                    self.pending.entry(k).or_default().merge(&c);
                }
                Err(e)
            }
        }
    }

    /// The background write-behind loop; returns when `shutdown` fires (the caller then does
    /// one last [`flush`](Self::flush)).
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.flush(store.as_ref()).await {
                tracing::warn!(error = %e, pending = self.pending(), "usage flush failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_merge_keeps_extremes() {
        let mut a = Counters {
            requests: 1,
            denied: 0,
            first_used: 50,
            last_used: 60,
            ..Counters::default()
        };
        a.merge(&Counters {
            requests: 2,
            denied: 3,
            first_used: 40,
            last_used: 55,
            ..Counters::default()
        });
        assert_eq!(
            (a.requests, a.denied, a.first_used, a.last_used),
            (3, 3, 40, 60)
        );
        let mut b = Counters {
            requests: 0,
            denied: 1,
            first_used: 0,
            last_used: 0,
            ..Counters::default()
        };
        b.merge(&Counters {
            requests: 1,
            denied: 0,
            first_used: 70,
            last_used: 70,
            ..Counters::default()
        });
        assert_eq!((b.first_used, b.last_used), (70, 70));
        // The latest refusal keeps its reason.
        let mut c = Counters {
            denied_at: 80,
            denied_error: Some(Denial::NotAllowed),
            ..Counters::default()
        };
        c.merge(&Counters {
            denied_at: 90,
            denied_error: Some(Denial::Blocked),
            ..Counters::default()
        });
        c.merge(&Counters::default());
        assert_eq!((c.denied_at, c.denied_error), (90, Some(Denial::Blocked)));
    }

    #[test]
    fn aggregates_per_token_and_ip() {
        let u = UsageRecorder::new(10);
        let t = TokenId::from_uuid(uuid::Uuid::from_u128(1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        u.record_use(t, ip, Timestamp(10));
        u.record_use(t, ip, Timestamp(20));
        u.record_denied(t, ip, Denial::Blocked, Timestamp(1));
        u.record_use(t, "192.0.2.2".parse().unwrap(), Timestamp(30));
        assert_eq!(u.pending(), 2);
        let c = *u.pending.get(&(t, Some(ip), 0)).unwrap();
        assert_eq!(
            (c.requests, c.denied, c.first_used, c.last_used),
            (2, 1, 10, 20)
        );
        assert_eq!(c.refused[Refusal::IpBlocked.index()], 1);
    }

    #[test]
    fn each_hour_is_its_own_entry_and_refusals_count_by_reason() {
        let u = UsageRecorder::new(10);
        let t = TokenId::generate();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        u.record_use(t, ip, Timestamp(HOUR_MS - 1));
        u.record_use(t, ip, Timestamp(HOUR_MS));
        u.record_refused(t, ip, Refusal::RateLimited, Timestamp(HOUR_MS + 5));
        u.record_refused(t, ip, Refusal::NoRoute, Timestamp(HOUR_MS + 6));
        u.record_denied(t, ip, Denial::NotAllowed, Timestamp(HOUR_MS + 7));
        assert_eq!(u.pending(), 2);
        let first = *u.pending.get(&(t, Some(ip), 0)).unwrap();
        let second = *u.pending.get(&(t, Some(ip), HOUR_MS)).unwrap();
        assert_eq!((first.requests, second.requests), (1, 1));
        assert_eq!(first.refused, [0; Refusal::COUNT]);
        let mut want = [0; Refusal::COUNT];
        for r in [
            Refusal::RateLimited,
            Refusal::NoRoute,
            Refusal::IpNotAllowed,
        ] {
            want[r.index()] = 1;
        }
        assert_eq!((second.refused, second.denied), (want, 1));
    }
}

#[cfg(test)]
mod denied_cap {
    use super::*;

    #[test]
    fn refusals_make_at_most_1000_new_records_per_token_per_hour() {
        let u = UsageRecorder::new(10_000);
        let t = TokenId::generate();
        let other = TokenId::generate();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let at = Timestamp(10_000_000);
        for i in 0..1_500 {
            u.record_denied(t, ip(i), Denial::Blocked, at);
        }
        // The 1 000 pairs, and the token's own entry holding the 500 capped refusals.
        assert_eq!(u.pending(), 1_001);
        assert_eq!(u.denied_capped(), 500);
        let own = *u.pending.get(&(t, None, hour_of(at).0)).unwrap();
        assert_eq!(
            (own.refused[Refusal::IpBlocked.index()], own.denied),
            (500, 0)
        );
        // A pair already pending still counts its refusals; another token has its own share.
        u.record_denied(t, ip(7), Denial::Blocked, at);
        u.record_denied(other, ip(5_000), Denial::Blocked, at);
        assert_eq!(u.pending(), 1_002);
        assert_eq!(u.denied_capped(), 500);
        // An hour later the token may make new records again.
        u.record_denied(t, ip(2_000), Denial::Blocked, Timestamp(at.0 + HOUR_MS - 1));
        assert_eq!(u.denied_capped(), 501);
        u.record_denied(t, ip(2_000), Denial::Blocked, Timestamp(at.0 + HOUR_MS));
        // The capped one landed in the token's entry of the next hour, then a new pair.
        assert_eq!(u.pending(), 1_004);
        u.prune_denied_windows(Timestamp(at.0 + 3 * HOUR_MS));
        assert!(u.new_denied.is_empty());
    }
}
