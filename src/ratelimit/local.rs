//! The local backend: each instance counts alone.
//!
//! One slot per token in a sharded [`DashMap`], created at the token's first check and then
//! only read: a check takes the shard's read lock and moves the slot's TAT with a
//! compare-and-swap loop, so checks of one token on many threads are exact (each admitted use
//! moves the TAT by exactly T from the value it read) and nothing is allocated. The write
//! lock is taken only to create a slot, to convert one whose limit changed, to forget one
//! and by [`Local::prune`].

use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use uuid::Uuid;

use super::{convert, step, RateLimit, Step, Verdict};
use crate::clock::Timestamp;

pub(super) struct Local {
    slots: DashMap<Uuid, Slot>,
}

struct Slot {
    /// The limit the ticks below count in (1/N ms).
    limit: RateLimit,
    /// The millisecond the ticks count from (the slot's creation), so they stay small.
    origin_ms: i64,
    /// The TAT, in ticks since `origin_ms`. Only ever compared-and-swapped: the modification
    /// order of this one atomic is what makes concurrent checks exact (Relaxed is enough; it
    /// publishes nothing else).
    tat: AtomicI64,
}

impl Slot {
    /// A full bucket at `now`.
    fn new(limit: RateLimit, now: Timestamp) -> Slot {
        Slot {
            limit,
            origin_ms: now.0,
            tat: AtomicI64::new(0),
        }
    }

    /// `now` in this slot's ticks.
    fn ticks(&self, now: Timestamp) -> i64 {
        now.0
            .saturating_sub(self.origin_ms)
            .saturating_mul(self.limit.ticks_per_ms())
    }

    fn check(&self, now: Timestamp) -> Verdict {
        let now_ticks = self.ticks(now);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            match step(tat.saturating_sub(now_ticks), self.limit) {
                Step::Refuse(v) => return v,
                Step::Admit { next, verdict } => {
                    match self.tat.compare_exchange_weak(
                        tat,
                        now_ticks.saturating_add(next),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return verdict,
                        Err(current) => tat = current,
                    }
                }
            }
        }
    }

    /// The same TAT, counted under `limit` from `now` (see [`convert`]).
    fn convert(&mut self, limit: RateLimit, now: Timestamp) {
        let n = self.limit.ticks_per_ms();
        let tat = *self.tat.get_mut();
        let tat_ms = self.origin_ms.saturating_add(tat.div_euclid(n));
        let d = convert(tat_ms, tat.rem_euclid(n), self.limit, limit, now);
        *self = Slot {
            limit,
            origin_ms: now.0,
            tat: AtomicI64::new(d),
        };
    }
}

impl Local {
    pub(super) fn new() -> Local {
        Local {
            slots: DashMap::new(),
        }
    }

    pub(super) fn check(&self, key: Uuid, limit: RateLimit, now: Timestamp) -> Verdict {
        if let Some(slot) = self.slots.get(&key) {
            if slot.limit == limit {
                return slot.check(now);
            }
        }
        // The token's first check, or its limit changed: under the shard's write lock.
        let mut slot = self
            .slots
            .entry(key)
            .or_insert_with(|| Slot::new(limit, now));
        if slot.limit != limit {
            slot.convert(limit, now);
        }
        slot.downgrade().check(now)
    }

    pub(super) fn forget(&self, key: Uuid) {
        self.slots.remove(&key);
    }

    /// Drops the slots whose TAT has passed: a missing slot reads as a full bucket, which is
    /// what they hold (as long as the clock does not go back).
    pub(super) fn prune(&self, now: Timestamp) {
        self.slots
            .retain(|_, slot| slot.tat.load(Ordering::Relaxed) > slot.ticks(now));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    fn lim(n: u64, per: &str) -> RateLimit {
        RateLimit::new(n, humantime::parse_duration(per).unwrap()).unwrap()
    }

    fn admitted(l: &Local, key: Uuid, limit: RateLimit, now: i64, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| {
                matches!(
                    l.check(key, limit, Timestamp(now)),
                    Verdict::Admitted { .. }
                )
            })
            .count() as u32
    }

    #[test]
    fn threads_hammering_one_key_admit_exactly_the_burst() {
        for limit in [lim(1000, "1m"), lim(1, "1s"), lim(1_000_000, "1s")] {
            let l = Arc::new(Local::new());
            let key = Uuid::new_v4();
            let now = Timestamp(1_700_000_000_000);
            let admitted = Arc::new(AtomicU32::new(0));
            let threads = 8;
            let per_thread = limit.requests() / 2 + 100;
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let (l, admitted) = (l.clone(), admitted.clone());
                    s.spawn(move || {
                        for _ in 0..per_thread {
                            if let Verdict::Admitted { .. } = l.check(key, limit, now) {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert!(threads * per_thread > limit.requests());
            assert_eq!(
                admitted.load(Ordering::Relaxed),
                limit.requests(),
                "{limit}"
            );
            assert!(matches!(l.check(key, limit, now), Verdict::Limited { .. }));
        }
    }

    #[test]
    fn keys_count_apart_and_forget_starts_afresh() {
        let l = Local::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let limit = lim(3, "1m");
        assert_eq!(admitted(&l, a, limit, 0, 5), 3);
        assert_eq!(admitted(&l, b, limit, 0, 5), 3);
        l.forget(a);
        assert_eq!(admitted(&l, a, limit, 0, 5), 3);
        assert_eq!(admitted(&l, b, limit, 0, 5), 0);
    }

    #[test]
    fn prune_drops_only_full_buckets_and_changes_no_verdict() {
        let l = Local::new();
        let limit = lim(2, "10s"); // T = 5 s
        let (busy, idle) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(admitted(&l, idle, limit, 0, 1), 1); // full again at 5 s
        assert_eq!(admitted(&l, busy, limit, 0, 2), 2); // full again at 10 s
        l.prune(Timestamp(4_999));
        assert_eq!(l.len(), 2);
        l.prune(Timestamp(5_000));
        assert_eq!(l.len(), 1, "the idle key's bucket is full: dropped");
        assert_eq!(
            l.check(busy, limit, Timestamp(5_000)),
            Verdict::Admitted {
                remaining: 0,
                reset_ms: 10_000
            },
            "the busy key kept its state"
        );
        assert_eq!(
            l.check(idle, limit, Timestamp(5_000)),
            Verdict::Admitted {
                remaining: 1,
                reset_ms: 5_000
            },
            "the idle key starts from the full bucket it had"
        );
        l.prune(Timestamp(1_000_000));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_changed_limit_keeps_what_was_used_up_to_an_empty_bucket() {
        let l = Local::new();
        let key = Uuid::new_v4();
        // Relaxed from 100/1d to 100/1m: the day's debt becomes one empty 1-minute bucket.
        let (day, minute) = (lim(100, "1d"), lim(100, "1m"));
        assert_eq!(admitted(&l, key, day, 0, 101), 100);
        assert_eq!(
            l.check(key, minute, Timestamp(1_000)),
            Verdict::Limited {
                retry_after_ms: 600,
                reset_ms: 60_000
            }
        );
        assert_eq!(admitted(&l, key, minute, 1_599, 5), 0);
        assert_eq!(admitted(&l, key, minute, 1_600, 5), 1);
        // Tightened from 100/1m to 1/1d after 50 uses (30 s used): the one use of the day
        // comes once those 30 s have passed.
        let key = Uuid::new_v4();
        let one = lim(1, "1d");
        assert_eq!(admitted(&l, key, minute, 0, 50), 50);
        assert_eq!(
            l.check(key, one, Timestamp(0)),
            Verdict::Limited {
                retry_after_ms: 30_000,
                reset_ms: 30_000
            }
        );
        assert_eq!(admitted(&l, key, one, 30_000, 2), 1);
        // A fraction of a millisecond of debt rounds up to a whole one under coarser ticks.
        let key = Uuid::new_v4();
        let (fine, coarse) = (lim(1_000_000, "1s"), lim(1, "1s"));
        assert_eq!(admitted(&l, key, fine, 0, 1), 1); // 1 µs used
        assert_eq!(
            l.check(key, coarse, Timestamp(0)),
            Verdict::Limited {
                retry_after_ms: 1,
                reset_ms: 1
            },
            "1 µs of debt is 1 ms under a limit counting whole milliseconds"
        );
    }
}
