//! The Redis rate-limit backend (`src/ratelimit/redis.rs`) against a real Redis server.
//!
//! The tests on the shared server read `TOKENGATE_TEST_REDIS_URL` (e.g.
//! `redis://127.0.0.1:6379`) and skip, saying why, when it is unset; they fail when it is set
//! but unreachable, or unset while `TOKENGATE_TEST_REQUIRE` names `redis` (see
//! `support::skip`), as the PostgreSQL tests do. Each uses fresh random keys, which expire
//! by themselves. The outage tests run a private `redis-server` of their own (temporary
//! directory, ephemeral port, nothing saved), stop and start it, and never touch the shared
//! one; they need only the `redis-server` binary, and skip (requirement `redis`) without it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::redis::{redis_url, PrivateRedis};
use support::{eventually, note};
use tokengate::clock::Timestamp;
use tokengate::ratelimit::{RateLimit, RateLimiter, Verdict};
use uuid::Uuid;

/// What a check may wait for Redis in these tests.
const TIMEOUT: Duration = Duration::from_millis(100);
/// A failed check answers within the timeout; this much more is scheduling on a busy machine.
const SLACK: Duration = Duration::from_millis(400);
/// Finding a (re)started server again.
const RECOVERY: Duration = Duration::from_secs(10);

/// A limiter on `url`, once it has answered a check (panics naming `url` if it never does).
async fn connected(url: &str) -> RateLimiter {
    let rl = RateLimiter::redis(url, TIMEOUT).expect("limiter");
    let probe = lim(1, "1s");
    eventually(&format!("Redis at {url} answers"), RECOVERY, || async {
        let v = rl.check(Uuid::new_v4(), probe, Timestamp(0)).await;
        (v != Verdict::Unavailable).then_some(())
    })
    .await;
    rl
}

fn lim(n: u64, per: &str) -> RateLimit {
    RateLimit::new(n, humantime::parse_duration(per).unwrap()).unwrap()
}

/// Milliseconds since the epoch, now (any base works: only the values passed in count).
fn wall_ms() -> i64 {
    use tokengate::clock::Clock;
    tokengate::clock::SystemClock.now().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget_exactly() {
    let Some(url) = redis_url("two_instances_share_one_budget_exactly") else {
        return;
    };
    let a = Arc::new(connected(&url).await);
    let b = Arc::new(connected(&url).await);
    let limit = lim(25, "1m");
    let key = Uuid::new_v4();
    let now = Timestamp(wall_ms());
    // 4 tasks per instance, 10 checks each, all at once at one frozen instant: 80 tries.
    let mut tasks = Vec::new();
    for rl in [&a, &b, &a, &b, &a, &b, &a, &b] {
        let rl = Arc::clone(rl);
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..10 {
                match rl.check(key, limit, now).await {
                    Verdict::Admitted { .. } => admitted += 1,
                    Verdict::Limited { .. } => {}
                    Verdict::Unavailable => panic!("Redis unavailable"),
                }
            }
            admitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 25, "one budget for both instances, not one each");
    for rl in [&a, &b] {
        assert_eq!(
            rl.check(key, limit, now).await,
            Verdict::Limited {
                retry_after_ms: 2_400,
                reset_ms: 60_000
            }
        );
        assert_eq!(rl.backend_errors(), 0);
    }
    // Another token has a budget of its own.
    assert!(matches!(
        a.check(Uuid::new_v4(), limit, now).await,
        Verdict::Admitted { remaining: 24, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_refills_with_the_gateway_clock_and_idle_keys_expire() {
    let Some(url) = redis_url("the_budget_refills_with_the_gateway_clock_and_idle_keys_expire")
    else {
        return;
    };
    let rl = connected(&url).await;
    let other = connected(&url).await;
    let limit = lim(5, "10s"); // T = 2 s
    let key = Uuid::new_v4();
    // A clock far from Redis's own: only the values passed in count.
    let t0 = wall_ms() - 3_600_000;
    let at = |ms: i64| Timestamp(t0 + ms);
    for remaining in (0..5).rev() {
        assert!(matches!(
            rl.check(key, limit, at(0)).await,
            Verdict::Admitted { remaining: r, .. } if r == remaining
        ));
    }
    assert_eq!(
        rl.check(key, limit, at(0)).await,
        Verdict::Limited {
            retry_after_ms: 2_000,
            reset_ms: 10_000
        }
    );
    // Refused uses drew nothing: one more comes exactly T later, on either instance.
    assert_eq!(
        other.check(key, limit, at(1_999)).await,
        Verdict::Limited {
            retry_after_ms: 1,
            reset_ms: 8_001
        }
    );
    assert_eq!(
        other.check(key, limit, at(2_000)).await,
        Verdict::Admitted {
            remaining: 0,
            reset_ms: 10_000
        }
    );
    // The key lives until its bucket is full again (plus 1 s of slack), then vanishes.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = format!("tokengate:rl:{key}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((9_000..=11_000).contains(&ttl), "PTTL {ttl}");
    // A whole `per` after the last use, the full burst is back.
    let mut admitted = 0;
    for _ in 0..7 {
        if let Verdict::Admitted { .. } = rl.check(key, limit, at(12_000)).await {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

/// The two backends give the same verdict for every check of one schedule: bursts, refills,
/// sub-millisecond emission intervals, a limit changed both ways, a clock moved back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_redis_agree_on_every_verdict() {
    let Some(url) = redis_url("local_and_redis_agree_on_every_verdict") else {
        return;
    };
    let redis = connected(&url).await;
    let local = RateLimiter::local();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |m: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let limits = [
        lim(1_000_000, "1s"),
        lim(7, "1m"),
        lim(3, "1001ms"),
        lim(100, "1d"),
        lim(1, "1s"),
    ];
    let mut checks = 0;
    let mut seen = [0usize; 2];
    for (i, &first) in limits.iter().enumerate() {
        let key = Uuid::new_v4();
        let mut limit = first;
        let mut now = wall_ms();
        for round in 0..60 {
            match round {
                // A changed limit (tighter, then looser), and the clock moved back.
                20 => limit = limits[(i + 1) % limits.len()],
                40 => limit = first,
                50 => now -= 5_000,
                _ => now += rnd(limit.per().as_millis() as u64 / 3 + 2) as i64,
            }
            for _ in 0..1 + rnd(5) {
                let (l, r) = (
                    local.check(key, limit, Timestamp(now)).await,
                    redis.check(key, limit, Timestamp(now)).await,
                );
                assert_eq!(l, r, "{limit} at {now}, round {round}");
                seen[usize::from(matches!(l, Verdict::Admitted { .. }))] += 1;
                checks += 1;
            }
        }
    }
    assert!(seen[0] > 20 && seen[1] > 20, "{seen:?} of {checks}");
}

/// One check, which must answer Unavailable within the timeout and count one backend error.
async fn unavailable(rl: &RateLimiter, limit: RateLimit) {
    let errors = rl.backend_errors();
    let start = Instant::now();
    let check = rl.check(Uuid::new_v4(), limit, Timestamp(wall_ms()));
    let v = tokio::time::timeout(TIMEOUT + SLACK, check)
        .await
        .unwrap_or_else(|_| panic!("no verdict within {:?}", TIMEOUT + SLACK));
    let took = start.elapsed();
    assert_eq!(v, Verdict::Unavailable, "after {took:?}");
    assert!(took <= TIMEOUT + SLACK, "took {took:?}");
    assert_eq!(rl.backend_errors(), errors + 1);
}

/// Polls checks on fresh keys until one is admitted; returns how long that took.
async fn until_admitted(rl: &RateLimiter, limit: RateLimit, what: &str) -> Duration {
    let (_, took) = eventually(what, RECOVERY, || async {
        let v = rl.check(Uuid::new_v4(), limit, Timestamp(wall_ms())).await;
        matches!(v, Verdict::Admitted { .. }).then_some(())
    })
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_down_at_start_delays_nothing_and_is_used_once_up() {
    let test = "a_redis_down_at_start_delays_nothing_and_is_used_once_up";
    let Some(mut server) = PrivateRedis::find(test) else {
        return;
    };
    let limit = lim(10, "1m");
    let start = Instant::now();
    let rl = RateLimiter::redis(&server.url(), TIMEOUT).expect("limiter");
    assert!(
        start.elapsed() < TIMEOUT,
        "creating the limiter does not connect"
    );
    for _ in 0..3 {
        unavailable(&rl, limit).await;
    }
    server.start().await;
    let took = until_admitted(&rl, limit, "admitted once Redis is up").await;
    note(&format!(
        "{test}: found the server {took:?} after it was up"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_stopped_redis_is_unavailable_within_the_timeout_then_used_again() {
    let test = "a_hung_or_stopped_redis_is_unavailable_within_the_timeout_then_used_again";
    let Some(mut server) = PrivateRedis::find(test) else {
        return;
    };
    server.start().await;
    let rl = connected(&server.url()).await;
    let limit = lim(3, "1m");
    let key = Uuid::new_v4();
    let now = Timestamp(wall_ms());
    for _ in 0..3 {
        assert!(matches!(
            rl.check(key, limit, now).await,
            Verdict::Admitted { .. }
        ));
    }
    assert!(matches!(
        rl.check(key, limit, now).await,
        Verdict::Limited { .. }
    ));
    assert_eq!(rl.backend_errors(), 0);

    // Hung: each check gives up at the timeout instead of waiting for an answer.
    server.signal("STOP");
    for _ in 0..3 {
        unavailable(&rl, limit).await;
    }
    server.signal("CONT");
    until_admitted(&rl, limit, "admitted once Redis answers again").await;
    // The budget spent before is still spent.
    assert!(matches!(
        rl.check(key, limit, now).await,
        Verdict::Limited { .. }
    ));

    // Gone (killed as in a crash): refused connections, counted the same way.
    server.stop();
    for _ in 0..5 {
        unavailable(&rl, limit).await;
    }

    // Started again on the same port, empty (it saved nothing) and without the script,
    // which is loaded again after NOSCRIPT.
    server.start().await;
    let took = until_admitted(&rl, limit, "admitted after the restart").await;
    note(&format!("{test}: recovered {took:?} after the restart"));
    let errors = rl.backend_errors();
    assert!(errors >= 8);
    let key = Uuid::new_v4();
    let mut admitted = 0;
    for _ in 0..5 {
        match rl.check(key, limit, now).await {
            Verdict::Admitted { .. } => admitted += 1,
            Verdict::Limited { .. } => {}
            Verdict::Unavailable => panic!("unavailable after recovering"),
        }
    }
    assert_eq!(admitted, 3);
    assert_eq!(rl.backend_errors(), errors, "no errors once recovered");
}
