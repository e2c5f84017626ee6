//! Property tests for routing bypasses (issue 7): whatever the encoding (dot segments, single
//! and double percent-encoding, backslashes, repeated slashes, mixed-case escapes), a request
//! is either refused or forwarded with the normalised path, and that path lies under the prefix
//! of the route that matched it. The first two properties run on the pure functions with many
//! cases; the last sends generated paths through the real gateway.

mod support;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use support::*;
use tokengate::proxy::path::normalise;
use tokengate::proxy::route::RouteTable;

/// Path pieces an attacker would combine.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/",
        "//",
        "a",
        "b",
        "sd",
        "feeds",
        "admin",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2F",
        "%2f",
        "%5C",
        "%5c",
        "%252e",
        "%252E",
        "%252f",
        "%255c",
        "\\",
        "..;",
        ".;",
        ";",
        "%00",
        "%41",
        "%7e",
        "%3a",
        "%25",
        "~",
        "-",
        "_",
        "..%2f",
        "%2e%2e%2f",
        "%u002e",
        "%",
        "%zz",
        "?",
        "#",
    ])
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

/// Paths that start like a route (or almost), then go hostile.
fn routed_path() -> impl Strategy<Value = String> {
    let start = prop::sample::select(vec![
        "/sd/",
        "/sd",
        "/sd//",
        "/%73d/",
        "/SD/",
        "/feeds/",
        "/sd/../feeds/",
        "/sd/%2e%2e/feeds/",
        "/x/../sd/",
    ]);
    (start, prop::collection::vec(piece(), 0..6)).prop_map(|(s, v)| format!("{s}{}", v.concat()))
}

fn is_clean(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("//")
        && !p.contains('\\')
        && p.split('/')
            .all(|s| s != "." && s != ".." && !s.starts_with("..;") && !s.starts_with(".;"))
        && !p.to_ascii_lowercase().contains("%2f")
        && !p.to_ascii_lowercase().contains("%5c")
        && !p.to_ascii_lowercase().contains("%2e")
        && !p.contains("%00")
}

proptest! {
    #![proptest_config(PropConfig { cases: 4000, ..PropConfig::default() })]

    #[test]
    fn normalised_paths_are_clean_and_stable(p in path()) {
        if let Ok(n) = normalise(&p) {
            prop_assert!(is_clean(&n), "{p:?} normalised to {n:?}");
            let again = normalise(&n);
            prop_assert_eq!(again.as_deref(), Ok(n.as_str()), "not idempotent for {:?}", p);
        }
    }

    #[test]
    fn a_match_lies_under_its_prefix(p in path()) {
        let table = RouteTable::new(vec![
            (None, "/sd/".to_string(), "sd"),
            (None, "/sd/admin/".to_string(), "admin"),
            (None, "/feeds/".to_string(), "feeds"),
        ]);
        if let Ok(n) = normalise(&p) {
            if let Some(m) = table.find(None, &n) {
                let bare = m.prefix.trim_end_matches('/');
                prop_assert!(n.starts_with(m.prefix) || n == bare, "{n:?} matched {:?}", m.prefix);
                // The rest is what the upstream gets with strip_prefix: still clean, still rooted.
                prop_assert!(m.rest.starts_with('/') && is_clean(m.rest), "rest {:?} of {n:?}", m.rest);
                prop_assert_eq!(format!("{}{}", bare, m.rest), if n == bare { format!("{bare}/") } else { n.clone() });
            }
        }
    }
}

#[tokio::test]
async fn generated_paths_through_the_gateway_never_reach_another_route() {
    let sd = Upstream::start().await;
    let feeds = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", sd.addr)
        .route_with("/feeds/", "third-party-feeds", feeds.addr, |r| {
            r.strip_prefix = false
        })
        .start()
        .await;
    // A token for /sd/ only: a path that normalises under /feeds/ must be refused (403), and
    // nothing may ever reach the feeds upstream.
    let (secret, _) = gw.create_token("sd-only", &["security-director"]).await;
    // 200 generated paths (deterministic per run of the strategy's RNG).
    let mut runner = TestRunner::new(PropConfig {
        cases: 200,
        ..PropConfig::default()
    });
    let strategy = routed_path();
    let cases: Vec<String> = (0..200)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("a generated path")
                .current()
        })
        .collect();
    let (mut sent, mut forwarded, mut refused) = (0, 0, 0);
    for raw in cases {
        // Only what hyper accepts as a request target is a request at all.
        let Ok(uri) = raw.parse::<http::Uri>() else {
            continue;
        };
        let target = uri.path().to_string();
        let before = sd.count();
        let r = gw.get(&target, Some(&secret)).await;
        sent += 1;
        match r.status.as_u16() {
            200 => forwarded += 1,
            400 => refused += 1,
            _ => {}
        }
        match normalise(&target) {
            Err(_) => assert_eq!(r.status.as_u16(), 400, "{target:?}: {r}"),
            Ok(n) if n == "/sd" || n.starts_with("/sd/") => {
                assert_eq!(r.status.as_u16(), 200, "{target:?}: {r}");
                let expected = n
                    .strip_prefix("/sd")
                    .filter(|s| !s.is_empty())
                    .unwrap_or("/");
                assert_eq!(sd.last().target, expected, "{target:?} normalised to {n:?}");
                assert_eq!(sd.count(), before + 1);
            }
            Ok(n) if n == "/feeds" || n.starts_with("/feeds/") => {
                assert_eq!(r.status.as_u16(), 403, "{target:?}: {r}")
            }
            Ok(_) => assert_eq!(r.status.as_u16(), 404, "{target:?}: {r}"),
        }
        assert_eq!(feeds.count(), 0, "{target:?} reached the feeds upstream");
    }
    // The generator must actually exercise both outcomes through the server.
    assert!(
        sent >= 100 && forwarded >= 10 && refused >= 10,
        "sent {sent}, forwarded {forwarded}, refused {refused}"
    );
    // A valid request right after all of that still succeeds.
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}
