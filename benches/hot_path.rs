//! Micro-benchmarks of the proxy's hot path pieces (criterion). Run: `cargo bench`.
//! Compare results as ratios within one run; the machine is shared and noisy.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::access::AccessNames;
use tokengate::clock::Timestamp;
use tokengate::model::{PreviousSecret, Status, TokenId, TokenRecord, TokenWithBlocks};
use tokengate::proxy::path::normalise;
use tokengate::proxy::route::RouteTable;
use tokengate::state::TokenIndex;
use tokengate::token::{parse_bearer, Secret, SecretHash};
use tokengate::usage::UsageRecorder;

fn record(i: u32, hash: SecretHash) -> TokenWithBlocks {
    TokenWithBlocks {
        token: TokenRecord {
            id: TokenId::parse_stored(&format!("00000000-0000-4000-8000-{i:012}")).unwrap(),
            name: format!("token-{i}"),
            description: None,
            access: AccessNames::new(["security-director".to_string()]),
            secret_hash: hash,
            status: Status::Active,
            inactive_reason: None,
            created_at: Timestamp(1_700_000_000_000),
            activated_at: None,
            deactivated_at: None,
            last_used_at: None,
            expires_at: None,
            previous_secret: None,
            rate_limit: None,
            allowed_ips: None,
            revoked_hash: None,
            version: 1,
        },
        blocks: Vec::new(),
    }
}

fn tokens(c: &mut Criterion) {
    const N: u32 = 1_000_000;
    let index = TokenIndex::default();
    let target = Secret::generate();
    for i in 0..N {
        index.upsert(record(i, SecretHash::of(format!("filler-{i}").as_bytes())));
    }
    index.upsert(record(N, target.hash()));
    let valid = target.expose().as_bytes().to_vec();
    let unknown = Secret::generate().expose().as_bytes().to_vec();
    let garbage = b"tg_this-is-not-a-valid-token-at-all-xx".to_vec();

    let mut g = c.benchmark_group("token");
    g.bench_function("parse_checksum_hash", |b| {
        b.iter(|| parse_bearer(black_box(&valid)))
    });
    g.bench_function("check_valid_among_1m", |b| {
        b.iter(|| {
            parse_bearer(black_box(&valid))
                .ok()
                .and_then(|h| index.get(&h))
        })
    });
    // The proxy's lookup: the current secret, else a previous one (rotation grace).
    let check = |index: &TokenIndex, h: &SecretHash| index.get(h).or_else(|| index.get_previous(h));
    g.bench_function("check_valid_among_1m_via_proxy_lookup", |b| {
        b.iter(|| {
            parse_bearer(black_box(&valid))
                .ok()
                .and_then(|h| check(&index, &h))
        })
    });
    // The same index with 10 000 tokens in a rotation grace (their previous secrets indexed).
    let rotating = TokenIndex::default();
    let old = Secret::generate();
    for i in 0..N {
        let mut r = record(i, SecretHash::of(format!("filler-{i}").as_bytes()));
        if i % 100 == 0 {
            let hash = if i == 0 {
                old.hash()
            } else {
                SecretHash::of(format!("old-{i}").as_bytes())
            };
            r.token.previous_secret = Some(PreviousSecret {
                hash,
                until: Timestamp(i64::MAX),
            });
        }
        rotating.upsert(r);
    }
    rotating.upsert(record(N, target.hash()));
    let previous = old.expose().as_bytes().to_vec();
    g.bench_function("check_valid_among_1m_with_10k_previous", |b| {
        b.iter(|| {
            parse_bearer(black_box(&valid))
                .ok()
                .and_then(|h| check(&rotating, &h))
        })
    });
    g.bench_function("check_previous_secret_among_1m", |b| {
        b.iter(|| {
            parse_bearer(black_box(&previous))
                .ok()
                .and_then(|h| check(&rotating, &h))
        })
    });
    g.bench_function("refuse_unknown_with_10k_previous", |b| {
        b.iter(|| {
            parse_bearer(black_box(&unknown))
                .ok()
                .and_then(|h| check(&rotating, &h))
                .is_none()
        })
    });
    g.bench_function("refuse_garbage", |b| {
        b.iter(|| parse_bearer(black_box(&garbage)).is_err())
    });
    g.bench_function("refuse_unknown_well_formed", |b| {
        b.iter(|| {
            parse_bearer(black_box(&unknown))
                .ok()
                .and_then(|h| index.get(&h))
                .is_none()
        })
    });
    g.finish();
}

fn usage(c: &mut Criterion) {
    let rec = UsageRecorder::new(10_000);
    let id = TokenId::from_uuid(uuid::Uuid::from_u128(1));
    let one: IpAddr = "192.0.2.1".parse().unwrap();
    let many: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()))
        .collect();
    let mut g = c.benchmark_group("usage");
    g.bench_function("record_one_ip", |b| {
        b.iter(|| rec.record_use(id, black_box(one), Timestamp(1)))
    });
    let mut i = 0usize;
    g.bench_function("record_10k_ips", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            rec.record_use(id, black_box(many[i]), Timestamp(1))
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let routes: Vec<(Option<String>, String, usize)> = (0..100)
        .map(|i| (None, format!("/api/v{}/service-{i}/", i % 3), i))
        .collect();
    let table = RouteTable::new(routes);
    let mut g = c.benchmark_group("routing");
    g.bench_function("find_among_100", |b| {
        b.iter(|| {
            table
                .find(black_box(None), black_box("/api/v1/service-97/items/42"))
                .map(|m| *m.route)
        })
    });
    g.bench_function("normalise_clean", |b| {
        b.iter(|| normalise(black_box("/feeds/v1/indicators/ip")))
    });
    g.bench_function("normalise_dirty", |b| {
        b.iter(|| normalise(black_box("/feeds//v1/./indicators/%7Euser/../ip%3a")))
    });
    g.finish();
}

fn metrics(c: &mut Criterion) {
    // What the proxy adds per request for metrics: one request count + latency observation,
    // one upstream observation, one lookup count (and a refusal count on refused requests).
    let m = tokengate::metrics::Metrics::new(["/sd/", "/feeds/"]);
    let mut g = c.benchmark_group("metrics");
    g.bench_function("per_request", |b| {
        b.iter(|| {
            m.lookup(black_box(true));
            m.upstream(black_box(0), std::time::Duration::from_micros(180));
            m.request(
                black_box(Some(0)),
                black_box(200),
                std::time::Duration::from_micros(250),
            );
        })
    });
    g.finish();
}

criterion_group!(benches, tokens, usage, routing, metrics);
criterion_main!(benches);
