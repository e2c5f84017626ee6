//! Route matching: which configured route a request belongs to, by host and path prefix.
//!
//! This module owns the canonical form of a request authority ([`normalise_host`]) and the
//! lookup from (host, normalised path) to a route ([`RouteTable`]). It is generic over the
//! route payload and knows nothing of upstreams, tokens or access rules; the config layer
//! builds the table (and rejects duplicate routes), [`super::path`] normalises the path
//! first, and the proxy decides what to do with the match. Pure code: no IO, no logging.
//!
//! All precomputation happens in [`RouteTable::new`], so [`RouteTable::find`] allocates
//! nothing: it is a binary search over hosts and a scan over prefixes longest-first.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Longest host name DNS can carry (RFC 1035), in its text form without a trailing dot.
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Lowercases a request authority (`Host` header or HTTP/2 `:authority`), strips the port and
/// a trailing dot; keeps IPv6 literals in brackets (`[::1]:8080` → `[::1]`).
///
/// Returns `None` for an empty or syntactically invalid authority: userinfo (`@`), spaces or
/// other characters outside `A-Z a-z 0-9 - _ .`, an empty host or label, a port that is not
/// all digits or above 65535, an unbracketed or unparsable IPv6 address, a zone id.
///
/// An IPv6 literal comes back in its RFC 5952 form (`[0:0::1]` → `[::1]`), so every spelling
/// of an address meets the same routes. An empty port (`example.com:`) is allowed, as in
/// RFC 3986. Only one trailing dot is stripped: `example.com..` is invalid.
pub fn normalise_host(authority: &str) -> Option<Cow<'_, str>> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        if !after.is_empty() && !is_valid_port(after.strip_prefix(':')?) {
            return None;
        }
        // `Ipv6Addr` rejects zone ids (`%25eth0`) and anything else that is not an address.
        let addr: Ipv6Addr = inside.parse().ok()?;
        return Some(Cow::Owned(format!("[{addr}]")));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if port.is_some_and(|p| !is_valid_port(p)) {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    // Already canonical (the usual case): no copy.
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// RFC 3986 `port = *DIGIT`, bounded to what TCP can address. Checked by hand because
/// `u16::from_str` also accepts a leading `+`.
fn is_valid_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && (port.is_empty() || port.parse::<u16>().is_ok())
}

/// A routing table built once from the configuration and shared by every request.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    /// In the order given to [`RouteTable::new`].
    routes: Vec<Route<T>>,
    /// Sorted by host for binary search; each list holds indices into `routes`, longest prefix
    /// first and, for equal lengths, in the order given.
    by_host: Vec<(String, Vec<usize>)>,
    /// Indices of the routes without a host, ordered like the lists in `by_host`.
    hostless: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Route<T> {
    prefix: String,
    payload: T,
}

/// A successful lookup.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteMatch<'a, T> {
    /// The payload of the route that matched.
    pub route: &'a T,
    /// The route's path prefix as stored (starts and ends with `/`), e.g. `"/sd/"`.
    pub prefix: &'a str,
    /// The request path with the prefix stripped; always starts with `/`. Prefix `"/sd/"` and
    /// path `"/sd/a/b"` give `"/a/b"`; path `"/sd"` or `"/sd/"` gives `"/"`; prefix `"/"`
    /// gives the whole path. Borrowed from the path passed to [`RouteTable::find`] (or a
    /// static `"/"`), so matching never allocates.
    pub rest: &'a str,
}

// Derived `Clone`/`Copy` would demand `T: Copy`; a match only holds references.
impl<T> Clone for RouteMatch<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for RouteMatch<'_, T> {}

impl<T> RouteTable<T> {
    /// Builds the table. `routes`: (host, `path_prefix`, payload). `host` is normally already
    /// normalised (lowercase, no port, no trailing dot) or `None`; it is passed through
    /// [`normalise_host`] again so that any spelling works, and a host that function rejects
    /// is kept lowercased and will never match a request. `path_prefix` should start and end
    /// with `/`; a missing slash at either end is added, so a prefix never matches part of a
    /// segment.
    ///
    /// If two routes have the same host and the same prefix, the first one given wins and the
    /// later one is unreachable (the config layer is expected to reject such duplicates).
    pub fn new(routes: Vec<(Option<String>, String, T)>) -> Self {
        let mut table = Vec::with_capacity(routes.len());
        let mut hosted: Vec<(String, usize)> = Vec::new();
        let mut hostless = Vec::new();
        for (index, (host, prefix, payload)) in routes.into_iter().enumerate() {
            table.push(Route {
                prefix: canonical_prefix(prefix),
                payload,
            });
            match host {
                Some(host) => {
                    let host = normalise_host(&host)
                        .map(Cow::into_owned)
                        .unwrap_or_else(|| host.to_ascii_lowercase());
                    hosted.push((host, index));
                }
                None => hostless.push(index),
            }
        }
        let prefix_len = |index: usize| table.get(index).map_or(0, |r| r.prefix.len());
        // Longest prefix first makes the first hit the best one; the stable sort (and the
        // index tie-break for hosted routes) keeps equal prefixes in the order given, which
        // is what makes the first duplicate win.
        hostless.sort_by_key(|&index| std::cmp::Reverse(prefix_len(index)));
        hosted.sort_by(|(host_a, a), (host_b, b)| {
            host_a
                .cmp(host_b)
                .then_with(|| prefix_len(*b).cmp(&prefix_len(*a)))
                .then_with(|| a.cmp(b))
        });
        let mut by_host: Vec<(String, Vec<usize>)> = Vec::new();
        for (host, index) in hosted {
            match by_host.last_mut() {
                Some((last, indices)) if *last == host => indices.push(index),
                _ => by_host.push((host, vec![index])),
            }
        }
        RouteTable {
            routes: table,
            by_host,
            hostless,
        }
    }

    /// Finds the route for a request: `host` is the request's normalised host (`None` if the
    /// request had none), `path` is an already-normalised path (see [`super::path`]).
    ///
    /// Routes for exactly `host` are tried first, longest prefix first; only if none of them
    /// matches are the routes without a host tried, again longest first. A route with a host
    /// never matches another host or a request without one. Returns `None` when no route
    /// matches. `path` must outlive the match because [`RouteMatch::rest`] borrows from it.
    pub fn find<'a>(&'a self, host: Option<&str>, path: &'a str) -> Option<RouteMatch<'a, T>> {
        let host_routes = host.and_then(|host| {
            let at = self
                .by_host
                .binary_search_by(|(h, _)| h.as_str().cmp(host))
                .ok()?;
            self.by_host.get(at).map(|(_, indices)| indices.as_slice())
        });
        host_routes
            .and_then(|indices| self.first_match(indices, path))
            .or_else(|| self.first_match(&self.hostless, path))
    }

    /// The number of routes, duplicates included.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no routes, so every lookup returns `None`.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The payloads, in the order given to [`RouteTable::new`].
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.routes.iter().map(|route| &route.payload)
    }

    fn first_match<'a>(&'a self, indices: &[usize], path: &'a str) -> Option<RouteMatch<'a, T>> {
        indices
            .iter()
            .filter_map(|&index| self.routes.get(index))
            .find_map(|route| {
                strip_prefix(&route.prefix, path).map(|rest| RouteMatch {
                    route: &route.payload,
                    prefix: &route.prefix,
                    rest,
                })
            })
    }
}

/// The remainder of `path` after `prefix` (which ends in `/`), starting with `/`, or `None`
/// if the path is outside the prefix. Matching `prefix` minus its slash and then requiring a
/// segment boundary covers both `/sd/...` and the bare `/sd` in one comparison.
fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    let directory = prefix.strip_suffix('/').unwrap_or(prefix);
    let after = path.strip_prefix(directory)?;
    if after.is_empty() {
        Some("/")
    } else if after.starts_with('/') {
        Some(after)
    } else {
        None
    }
}

fn canonical_prefix(mut prefix: String) -> String {
    if !prefix.starts_with('/') {
        prefix.insert(0, '/');
    }
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(Option<&str>, &str, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::new(
            routes
                .iter()
                .map(|&(host, prefix, name)| (host.map(String::from), prefix.to_owned(), name))
                .collect(),
        )
    }

    /// (payload, prefix, rest) of the match, for compact assertions.
    fn find<'a>(
        t: &'a RouteTable<&'static str>,
        host: Option<&str>,
        path: &'a str,
    ) -> Option<(&'static str, &'a str, &'a str)> {
        t.find(host, path).map(|m| (*m.route, m.prefix, m.rest))
    }

    #[test]
    fn host_normalisation() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM.:443", "example.com"),
            ("EXAMPLE.com.", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com:", "example.com"),
            ("example.com:0", "example.com"),
            ("example.com:65535", "example.com"),
            ("localhost", "localhost"),
            ("my_host-1.internal", "my_host-1.internal"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[::1]:80", "[::1]"),
            ("[::1]:8080", "[::1]"),
            ("[::1]:", "[::1]"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("[2001:DB8::A]:443", "[2001:db8::a]"),
            ("[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalise_host(input).as_deref(),
                Some(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn invalid_hosts_are_none() {
        let long_label = "a".repeat(64);
        let long_host = ["a"; 127].join(".") + ".b";
        for input in [
            "",
            ".",
            ":80",
            ".:80",
            "user@example.com",
            "user:pass@example.com",
            "example.com@evil.com",
            "exa mple.com",
            " example.com",
            "example.com ",
            "example.com\t",
            "example.com\r\n",
            "example.com:abc",
            "example.com:+80",
            "example.com:-1",
            "example.com:65536",
            "example.com:99999999999999999999",
            "example.com:80:80",
            "example.com..",
            ".example.com",
            "a..b",
            "exa%6dple.com",
            "exämple.com",
            "example.com/",
            "example.com/path",
            "example.com\\",
            "::1",
            "[::1",
            "::1]",
            "[]",
            "[::1]x",
            "[::1]:x",
            "[::1]:99999",
            "[::1].",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
            "[example.com]",
            "[127.0.0.1]",
            "[::1]]",
            "[[::1]]",
            long_label.as_str(),
            long_host.as_str(),
        ] {
            assert_eq!(normalise_host(input), None, "{input:?}");
        }
    }

    #[test]
    fn host_length_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert_eq!(normalise_host(&label).as_deref(), Some(label.as_str()));
        let host = ["a"; 127].join(".");
        assert_eq!(host.len(), 253);
        assert_eq!(normalise_host(&host).as_deref(), Some(host.as_str()));
        let with_dot = format!("{host}.");
        assert_eq!(normalise_host(&with_dot).as_deref(), Some(host.as_str()));
    }

    #[test]
    fn normalised_host_is_a_fixed_point() {
        for input in ["Example.COM.:443", "[0::1]:80", "a-b_c.d", "[2001:DB8::A]"] {
            let Some(once) = normalise_host(input) else {
                panic!("{input:?} rejected");
            };
            assert_eq!(normalise_host(&once).as_deref(), Some(&*once));
        }
    }

    #[test]
    fn prefix_matches_itself_with_and_without_slash() {
        let t = table(&[(None, "/sd/", "sd")]);
        assert_eq!(find(&t, None, "/sd"), Some(("sd", "/sd/", "/")));
        assert_eq!(find(&t, None, "/sd/"), Some(("sd", "/sd/", "/")));
        assert_eq!(find(&t, None, "/sd/a/b"), Some(("sd", "/sd/", "/a/b")));
        assert_eq!(find(&t, None, "/sd/a/b/"), Some(("sd", "/sd/", "/a/b/")));
    }

    #[test]
    fn prefix_does_not_match_part_of_a_segment() {
        let t = table(&[(None, "/sd/", "sd")]);
        assert_eq!(find(&t, None, "/sdx"), None);
        assert_eq!(find(&t, None, "/sdx/a"), None);
        assert_eq!(find(&t, None, "/s"), None);
        assert_eq!(find(&t, None, "/"), None);
        assert_eq!(find(&t, None, "/x/sd/"), None);
    }

    #[test]
    fn comparison_is_case_sensitive() {
        let t = table(&[(None, "/sd/", "sd")]);
        assert_eq!(find(&t, None, "/SD/a"), None);
        assert_eq!(find(&t, None, "/Sd"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = table(&[(None, "/", "root")]);
        assert_eq!(find(&t, None, "/"), Some(("root", "/", "/")));
        assert_eq!(find(&t, None, "/a"), Some(("root", "/", "/a")));
        assert_eq!(find(&t, None, "/a/b/"), Some(("root", "/", "/a/b/")));
        assert_eq!(
            find(&t, Some("example.com"), "/x"),
            Some(("root", "/", "/x"))
        );
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let routes = [
            (None, "/", "root"),
            (None, "/api/", "api"),
            (None, "/api/v1/", "v1"),
            (None, "/api/v1/admin/", "admin"),
        ];
        let forward = table(&routes);
        let mut reversed_routes = routes;
        reversed_routes.reverse();
        let reversed = table(&reversed_routes);
        for t in [&forward, &reversed] {
            assert_eq!(find(t, None, "/x"), Some(("root", "/", "/x")));
            assert_eq!(find(t, None, "/api"), Some(("api", "/api/", "/")));
            assert_eq!(find(t, None, "/api/v2"), Some(("api", "/api/", "/v2")));
            assert_eq!(find(t, None, "/api/v1/x"), Some(("v1", "/api/v1/", "/x")));
            assert_eq!(
                find(t, None, "/api/v1/admin/users"),
                Some(("admin", "/api/v1/admin/", "/users"))
            );
            assert_eq!(
                find(t, None, "/api/v1/adminx"),
                Some(("v1", "/api/v1/", "/adminx"))
            );
        }
    }

    #[test]
    fn host_route_wins_over_longer_hostless_route() {
        let t = table(&[
            (None, "/api/v1/", "hostless-long"),
            (Some("a.example"), "/", "host-root"),
        ]);
        assert_eq!(
            find(&t, Some("a.example"), "/api/v1/x"),
            Some(("host-root", "/", "/api/v1/x"))
        );
        assert_eq!(
            find(&t, Some("b.example"), "/api/v1/x"),
            Some(("hostless-long", "/api/v1/", "/x"))
        );
        assert_eq!(
            find(&t, None, "/api/v1/x"),
            Some(("hostless-long", "/api/v1/", "/x"))
        );
    }

    #[test]
    fn falls_back_to_hostless_when_no_host_route_matches() {
        let t = table(&[
            (Some("a.example"), "/admin/", "a-admin"),
            (None, "/", "root"),
            (None, "/public/", "public"),
        ]);
        assert_eq!(
            find(&t, Some("a.example"), "/admin/x"),
            Some(("a-admin", "/admin/", "/x"))
        );
        assert_eq!(
            find(&t, Some("a.example"), "/public/x"),
            Some(("public", "/public/", "/x"))
        );
        assert_eq!(
            find(&t, Some("a.example"), "/other"),
            Some(("root", "/", "/other"))
        );
    }

    #[test]
    fn host_route_never_matches_other_host_or_no_host() {
        let t = table(&[(Some("a.example"), "/", "a")]);
        assert_eq!(find(&t, Some("a.example"), "/x"), Some(("a", "/", "/x")));
        assert_eq!(find(&t, Some("b.example"), "/x"), None);
        assert_eq!(find(&t, Some("A.example"), "/x"), None);
        assert_eq!(find(&t, Some("a.example.evil"), "/x"), None);
        assert_eq!(find(&t, Some("x.a.example"), "/x"), None);
        assert_eq!(find(&t, Some(""), "/x"), None);
        assert_eq!(find(&t, None, "/x"), None);
    }

    #[test]
    fn longest_prefix_within_host() {
        let t = table(&[
            (Some("a.example"), "/", "a-root"),
            (Some("b.example"), "/api/v1/", "b-v1"),
            (Some("a.example"), "/api/", "a-api"),
            (Some("b.example"), "/", "b-root"),
            (Some("a.example"), "/api/v1/", "a-v1"),
        ]);
        assert_eq!(find(&t, Some("a.example"), "/"), Some(("a-root", "/", "/")));
        assert_eq!(
            find(&t, Some("a.example"), "/api/x"),
            Some(("a-api", "/api/", "/x"))
        );
        assert_eq!(
            find(&t, Some("a.example"), "/api/v1/x"),
            Some(("a-v1", "/api/v1/", "/x"))
        );
        assert_eq!(
            find(&t, Some("b.example"), "/api/x"),
            Some(("b-root", "/", "/api/x"))
        );
        assert_eq!(
            find(&t, Some("b.example"), "/api/v1"),
            Some(("b-v1", "/api/v1/", "/"))
        );
    }

    #[test]
    fn first_duplicate_wins() {
        let t = table(&[
            (None, "/x/", "first"),
            (Some("h"), "/x/", "host-first"),
            (None, "/x/", "second"),
            (Some("h"), "/x/", "host-second"),
        ]);
        assert_eq!(find(&t, None, "/x/y"), Some(("first", "/x/", "/y")));
        assert_eq!(
            find(&t, Some("h"), "/x/y"),
            Some(("host-first", "/x/", "/y"))
        );
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t: RouteTable<&str> = RouteTable::new(Vec::new());
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.iter().count(), 0);
        assert!(t.find(None, "/").is_none());
        assert!(t.find(Some("a.example"), "/").is_none());
    }

    #[test]
    fn iter_and_len_follow_given_order() {
        let t = table(&[
            (None, "/", "one"),
            (Some("h"), "/a/b/", "two"),
            (None, "/a/", "three"),
        ]);
        assert!(!t.is_empty());
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.iter().copied().collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
    }

    #[test]
    fn route_hosts_are_normalised_at_build_time() {
        let t = table(&[
            (Some("A.Example.:443"), "/", "a"),
            (Some("[0:0::1]"), "/", "v6"),
            (Some("not valid"), "/", "never"),
        ]);
        assert_eq!(find(&t, Some("a.example"), "/x"), Some(("a", "/", "/x")));
        assert_eq!(find(&t, Some("[::1]"), "/x"), Some(("v6", "/", "/x")));
        assert_eq!(
            find(&t, Some("not valid"), "/x"),
            Some(("never", "/", "/x"))
        );
        assert_eq!(normalise_host("not valid"), None);
    }

    #[test]
    fn malformed_prefixes_get_their_slashes() {
        let t = table(&[(None, "sd", "sd"), (None, "", "root")]);
        assert_eq!(find(&t, None, "/sd/a"), Some(("sd", "/sd/", "/a")));
        assert_eq!(find(&t, None, "/sdx"), Some(("root", "/", "/sdx")));
    }

    #[test]
    fn rest_borrows_from_the_path() {
        let t = table(&[(None, "/sd/", "sd")]);
        let path = String::from("/sd/a/b");
        let Some(m) = t.find(None, &path) else {
            panic!("no match");
        };
        let copy = m;
        assert_eq!(copy, m);
        assert!(path.as_bytes().as_ptr_range().contains(&m.rest.as_ptr()));
        assert!(path.ends_with(m.rest));
    }

    #[test]
    fn many_routes() {
        let names: Vec<String> = (0..100).map(|i| format!("/svc{i}/")).collect();
        let routes = names
            .iter()
            .enumerate()
            .map(|(i, prefix)| {
                let host = (i % 2 == 0).then(|| format!("h{}.example", i % 10));
                (host, prefix.clone(), i)
            })
            .collect();
        let t = RouteTable::new(routes);
        assert_eq!(t.len(), 100);
        for (i, prefix) in names.iter().enumerate() {
            let path = format!("{prefix}x");
            let host = format!("h{}.example", i % 10);
            let m = t.find(Some(&host), &path).map(|m| (*m.route, m.rest));
            assert_eq!(m, Some((i, "/x")), "{path}");
            // Host-specific routes are invisible without their host; hostless ones are not.
            let without_host = t.find(None, &path).map(|m| *m.route);
            assert_eq!(without_host, (i % 2 == 1).then_some(i), "{path}");
        }
        // `/svc1/` must not swallow `/svc10/`: boundaries are segment-aligned.
        let m = t.find(None, "/svc11/x").map(|m| *m.route);
        assert_eq!(m, Some(11));
    }

    #[test]
    fn hostile_lookups() {
        let t = table(&[
            (Some("admin.example"), "/", "admin"),
            (None, "/public/", "public"),
        ]);
        // Un-normalised input is not this module's job, but must not escalate: no route for
        // these, and certainly not the host-specific one.
        for path in ["", "public/", "//public/x", "/public%2F"] {
            assert_eq!(find(&t, None, path), None, "{path:?}");
        }
        assert_eq!(find(&t, Some("admin.example:443"), "/x"), None);
        assert_eq!(find(&t, Some("ADMIN.example"), "/x"), None);
        assert_eq!(find(&t, Some("admin.example\0"), "/x"), None);
        let long_path = format!("/public/{}", "a/".repeat(10_000));
        assert_eq!(
            find(&t, None, &long_path).map(|(name, _, _)| name),
            Some("public")
        );
    }
}
