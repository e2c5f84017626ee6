//! Route matching: which configured route a request belongs to, by host and path prefix.
//!
//! This module owns the lookup from (host, normalised path) to a route ([`RouteTable`]);
//! hosts are compared in the canonical form of [`crate::uri::host::normalise_host`]. It is generic over the
//! route payload and knows nothing of upstreams, tokens or access rules; the config layer
//! builds the table (and rejects duplicate routes), [`crate::uri::path`] normalises the path
//! first, and the proxy decides what to do with the match. Pure code: no IO, no logging.
//!
//! All precomputation happens in [`RouteTable::new`], so [`RouteTable::find`] allocates
//! nothing: it is a binary search over hosts and a scan over prefixes longest-first.

use std::borrow::Cow;

use crate::uri::host::normalise_host;

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
    /// request had none), `path` is an already-normalised path (see [`crate::uri::path`]).
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
