use super::*;
use std::io::Write;

fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(Some(f.path()), env)
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::defaults();
    assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.usage.flush_interval, Duration::from_secs(1));
    assert_eq!(c.lifecycle.inactive_after, Duration::from_secs(30 * 86400));
    assert_eq!(c.lifecycle.delete_after, Duration::from_secs(90 * 86400));
    assert_eq!(c.proxy.failed_auth_limit, 20);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.store.url, StoreUrl::Sqlite("data/tokengate.db".into()));
}

#[test]
fn shipped_config_file_equals_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
    let c = Config::load(Some(&path), Vec::new()).unwrap();
    let d = Config::defaults();
    assert_eq!(format!("{c:?}"), format!("{d:?}"));
}

#[test]
fn env_overrides_scalars_and_ignores_non_config_vars() {
    let c = load_str(
        "[usage]\nflush_interval = \"1s\"\n",
        &[
            ("TOKENGATE_USAGE__FLUSH_INTERVAL", "5s"),
            ("TOKENGATE_PROXY__FAILED_AUTH_LIMIT", "7"),
            ("TOKENGATE_PROXY__ACCESS_LOG", "false"),
            ("TOKENGATE_ADMIN_KEY", "not-a-config-key"),
            ("TOKENGATE_ADMIN_URL", "http://x"),
        ],
    )
    .unwrap();
    assert_eq!(c.usage.flush_interval, Duration::from_secs(5));
    assert_eq!(c.proxy.failed_auth_limit, 7);
    assert!(!c.proxy.access_log);
    // Numeric-looking values of string keys stay strings; numeric keys parse text.
    let c2 = load_str(
        "",
        &[
            ("TOKENGATE_STORE__OUTAGE_GRACE", "0"),
            ("TOKENGATE_ADMIN__KEY_FILE", "1234"),
            ("TOKENGATE_USAGE__MAX_IPS_PER_TOKEN", "42"),
            ("TOKENGATE_ADMIN__METRICS_PUBLIC", "true"),
        ],
    )
    .unwrap();
    assert_eq!(c2.store.outage_grace, Duration::ZERO);
    assert_eq!(c2.admin.key_file, PathBuf::from("1234"));
    assert_eq!(c2.usage.max_ips_per_token, 42);
    assert!(c2.admin.metrics_public);
    let e = load_str("", &[("TOKENGATE_PROXY__FAILED_AUTH_LIMIT", "many")]).unwrap_err();
    assert!(e.to_string().starts_with("proxy.failed_auth_limit:"), "{e}");
}

/// An unknown key or section set from the environment is refused by the variable's name (the
/// operator wrote no TOML for it); the same key in the file is refused by its TOML name.
#[test]
fn an_unknown_key_from_the_environment_names_the_variable() {
    for var in [
        "TOKENGATE_USAGE__FLUSH_INTERVALL",
        "TOKENGATE_USAGEE__FLUSH_INTERVAL",
    ] {
        let e = load_str("", &[(var, "5s")]).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{var}: not a config key")), "{e}");
    }
    let e = load_str("[usage]\nflush_intervall = \"5s\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("usage.flush_intervall:"), "{e}");
}

#[test]
fn errors_name_the_key() {
    let e = load_str("[usage]\nflush_interval = \"soon\"\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "usage.flush_interval: invalid duration \"soon\""
    );
    let e = load_str("[usage]\nbogus = 1\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("usage"), "{e}");
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = load_str("", &[("TOKENGATE_USAGE__FLUSH_INTERVAL", "soon")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "usage.flush_interval: invalid duration \"soon\""
    );
    let e = load_str("[lifecycle]\ninactive_after = \"90d\"\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("lifecycle.delete_after:"), "{e}");
    let e = load_str("[proxy]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("proxy.listen:"), "{e}");
    let e = load_str("[[routes]]\npath_prefix = \"/a\"\naccess = \"security-director\"\nupstream = \"http://127.0.0.1:1\"\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("routes[0].path_prefix:"), "{e}");
    let e = load_str(
        "[[routes]]\npath_prefix = \"/a/\"\naccess = \"root\"\nupstream = \"http://127.0.0.1:1\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("routes[0].access:"), "{e}");
    let e = load_str("[store]\nurl = \"mysql://x\"\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("store.url:"), "{e}");
    let e = load_str("[proxy]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", &[]).unwrap_err();
    assert!(e.to_string().starts_with("proxy.trusted_proxies:"), "{e}");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/tg.toml")), Vec::new()).unwrap_err();
    assert!(matches!(e, ConfigError::Missing(_)));
}

#[test]
fn a_file_without_routes_has_none() {
    let c = load_str("[proxy]\nlisten = \"127.0.0.1:0\"\n", &[]).unwrap();
    assert!(c.routes.is_empty());
}

#[test]
fn bad_postgres_urls_are_refused_without_echoing_them() {
    let e = load_str(
        "[store]\nurl = \"postgres://u:hunter2@db:notaport/x\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("store.url:"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    let ok = load_str(
        "[store]\nurl = \"postgres://u@db/x?options=-csearch_path%3Dtg\"\noutage_grace = \"0\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(ok.store.outage_grace, Duration::ZERO);
}

#[test]
fn postgres_tls_parameters_are_checked_at_load() {
    for (url, why) in [
        (
            "postgres://u:hunter2@db/x?sslmode=prefer",
            "falls back to plaintext",
        ),
        (
            "postgres://u:hunter2@db/x?sslmode=verify-full&sslkey=k.pem",
            "go together",
        ),
    ] {
        let e = load_str(&format!("[store]\nurl = \"{url}\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.url:") && e.contains(why), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    load_str(
        "[store]\nurl = \"postgres://u@db/x?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem\"\n",
        &[],
    )
    .unwrap();
}

#[test]
fn postgres_urls_are_redacted_in_debug() {
    let u = StoreUrl::Postgres("postgres://u:hunter2@db/x".into());
    assert!(!format!("{u:?}").contains("hunter2"));
}

mod tls_tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load(Some(f.path()), Vec::<(String, String)>::new())
    }

    fn route(upstream: &str, extra: &str) -> String {
        format!(
            "[[routes]]\npath_prefix = \"/a/\"\naccess = \"security-director\"\nupstream = \"{upstream}\"\n{extra}\n"
        )
    }

    #[test]
    fn the_defaults_and_dev_are_plain_http() {
        let c = Config::defaults();
        assert!(c.proxy.tls.is_none() && c.admin.tls.is_none());
        assert!(c.routes.iter().all(|r| r.tls == UpstreamTls::default()));
    }

    #[test]
    fn listener_tls_keys_are_parsed() {
        let c = load(
            "[proxy]\ntls = { cert = \"p.pem\", key = \"p.key\" }\n\
             [admin]\ntls = { cert = \"a.pem\", key = \"a.key\", client_ca = \"ca.pem\" }\n",
        )
        .unwrap();
        let p = c.proxy.tls.unwrap();
        assert_eq!((p.cert, p.key), ("p.pem".into(), "p.key".into()));
        assert_eq!(c.admin.tls.unwrap().client_ca, Some("ca.pem".into()));
        let e = load("[proxy]\ntls = { cert = \"p.pem\", key = \"p.key\", client_ca = \"c\" }\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("proxy.tls.client_ca:"), "{e}");
        let e = load("[admin]\ntls = { cert = \"\", key = \"a.key\" }\n").unwrap_err();
        assert!(e.to_string().starts_with("admin.tls.cert:"), "{e}");
        let e = load("[admin]\ntls = { cert = \"a.pem\" }\n").unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn route_tls_keys_are_checked_and_named() {
        let c = load(&route(
            "https://backend.internal:8443/base",
            "ca_file = \"ca.pem\"\nclient_cert = \"c.pem\"\nclient_key = \"c.key\"\ntls_server_name = \"api.internal\"",
        ))
        .unwrap();
        let t = &c.routes[0].tls;
        assert_eq!(t.ca_file, Some("ca.pem".into()));
        assert_eq!(t.server_name.as_deref(), Some("api.internal"));
        load(&route("https://127.0.0.1:8443", "")).unwrap();

        let e = load(&route("http://127.0.0.1:1", "tls_server_name = \"x\"")).unwrap_err();
        assert!(
            e.to_string().starts_with("routes[0].tls_server_name:"),
            "{e}"
        );
        let e = load(&route("http://127.0.0.1:1", "ca_file = \"ca.pem\"")).unwrap_err();
        assert!(e.to_string().starts_with("routes[0].ca_file:"), "{e}");
        let e = load(&route("https://h:1", "client_cert = \"c.pem\"")).unwrap_err();
        assert!(e.to_string().starts_with("routes[0].client_key:"), "{e}");
        let e = load(&route("https://h:1", "client_key = \"c.key\"")).unwrap_err();
        assert!(e.to_string().starts_with("routes[0].client_cert:"), "{e}");
        let e = load(&route("https://h:1", "tls_server_name = \"not a name\"")).unwrap_err();
        assert!(
            e.to_string().starts_with("routes[0].tls_server_name:"),
            "{e}"
        );
        let e = load(&route("ftp://h:1", "")).unwrap_err();
        assert!(e.to_string().starts_with("routes[0].upstream:"), "{e}");
    }

    #[test]
    fn routes_to_one_https_origin_may_differ_in_tls_settings() {
        // Upstream connections are keyed by origin and TLS setting (see `proxy::upstream`),
        // so two routes to one host:port need not agree.
        let two = |a: &str, b: &str| {
            format!(
                "[[routes]]\npath_prefix = \"/a/\"\naccess = \"security-director\"\nupstream = \"https://h:1\"\n{a}\n\
                 [[routes]]\npath_prefix = \"/b/\"\naccess = \"security-director\"\nupstream = \"https://H:1/x\"\n{b}\n"
            )
        };
        load(&two("ca_file = \"a.pem\"", "ca_file = \"a.pem\"")).unwrap();
        load(&two("ca_file = \"a.pem\"", "")).unwrap();
        load(&two("ca_file = \"a.pem\"", "ca_file = \"b.pem\"")).unwrap();
    }
}

#[test]
fn access_types_default_to_the_seeds_two_and_routes_must_name_a_configured_one() {
    let c = Config::defaults();
    let names: Vec<_> = c.access_types.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["security-director", "third-party-feeds"]);

    let own = "[[access_types]]\nname = \"billing\"\nlabel = \"Billing API\"\n\
               [[access_types]]\nname = \"reports\"\nlabel = \"Reports\"\n";
    let route = |access: &str| {
        format!("[[routes]]\npath_prefix = \"/b/\"\naccess = \"{access}\"\nupstream = \"http://127.0.0.1:1\"\n")
    };
    let c = load_str(&format!("{own}{}", route("reports")), &[]).unwrap();
    let labels: Vec<_> = c.access_types.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(labels, ["Billing API", "Reports"]);
    assert_eq!(Some(c.routes[0].access), c.access_types.bit("reports"));

    // Declaring types replaces the default two: a route naming a seed type is an error that
    // names the route and the configured types.
    let e = load_str(&format!("{own}{}", route("security-director")), &[]).unwrap_err();
    let e = e.to_string();
    assert!(e.starts_with("routes[0].access: route \"/b/\""), "{e}");
    assert!(e.contains("billing, reports"), "{e}");

    let e = load_str(
        "[[access_types]]\nname = \"Bad Name\"\nlabel = \"x\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("access_types[0].name:"), "{e}");
    let e = load_str(
        "[[access_types]]\nname = \"a\"\nlabel = \"x\"\n[[access_types]]\nname = \"a\"\nlabel = \"y\"\n",
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("access_types[1].name:"), "{e}");
    let e = load_str("[[access_types]]\nname = \"a\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("label"), "{e}");
}

#[test]
fn rate_limit_section_defaults_to_local_and_checks_its_keys() {
    let c = Config::defaults();
    assert_eq!(c.rate_limit.backend, RateLimitBackend::Local);
    assert_eq!(c.rate_limit.on_backend_error, OnBackendError::Allow);
    assert!(!c.rate_limit.headers);
    let c = load_str(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"redis://:pw@10.0.0.9:6380/2\"\non_backend_error = \"deny\"\nheaders = true\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.rate_limit.backend,
        RateLimitBackend::Redis {
            url: "redis://:pw@10.0.0.9:6380/2".into()
        }
    );
    assert_eq!(c.rate_limit.on_backend_error, OnBackendError::Deny);
    assert!(c.rate_limit.headers);
    assert!(
        !format!("{c:?}").contains(":pw@"),
        "the Redis password in Debug"
    );
    for (toml, key) in [
        ("backend = \"memcached\"", "rate_limit.backend:"),
        (
            "on_backend_error = \"maybe\"",
            "rate_limit.on_backend_error:",
        ),
        ("redis_timeout = \"1m\"", "rate_limit.redis_timeout:"),
    ] {
        let e = load_str(&format!("[rate_limit]\n{toml}\n"), &[]).unwrap_err();
        assert!(e.to_string().starts_with(key), "{e}");
    }
    let e = load_str(
        "[rate_limit]\nbackend = \"redis\"\nredis_url = \"http://:secret@h\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("rate_limit.redis_url:") && !e.contains("secret"),
        "{e}"
    );
}

#[test]
fn forward_auth_is_off_by_default_and_its_keys_are_checked() {
    let d = Config::defaults();
    assert_eq!(d.forward_auth.listen, None);
    assert_eq!(d.forward_auth.envoy_prefix, "/envoy");
    assert_eq!(
        d.forward_auth.callers,
        vec![
            "127.0.0.0/8".parse::<IpNet>().unwrap(),
            "::1/128".parse().unwrap()
        ]
    );
    let c = load_str(
        "[forward_auth]\nlisten = \"127.0.0.1:8081\"\ntrusted_hops = [\"10.0.0.0/8\"]\n\
         envoy_prefix = \"/ext/authz\"\ntls = { cert = \"f.pem\", key = \"f.key\" }\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.forward_auth.listen,
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(c.forward_auth.envoy_prefix, "/ext/authz");
    assert_eq!(c.forward_auth.tls.unwrap().cert, PathBuf::from("f.pem"));
    for (toml, key) in [
        ("listen = \"nowhere\"", "forward_auth.listen:"),
        ("callers = [\"10.0.0.0/33\"]", "forward_auth.callers:"),
        ("trusted_hops = [\"x\"]", "forward_auth.trusted_hops:"),
        ("envoy_prefix = \"envoy\"", "forward_auth.envoy_prefix:"),
        ("envoy_prefix = \"/envoy/\"", "forward_auth.envoy_prefix:"),
        ("envoy_prefix = \"/\"", "forward_auth.envoy_prefix:"),
        ("envoy_prefix = \"/auth\"", "forward_auth.envoy_prefix:"),
        ("envoy_prefix = \"/auth/x\"", "forward_auth.envoy_prefix:"),
        (
            "envoy_prefix = \"/_tokengate\"",
            "forward_auth.envoy_prefix:",
        ),
        ("envoy_prefix = \"/a/../b\"", "forward_auth.envoy_prefix:"),
        (
            "tls = { cert = \"f.pem\", key = \"f.key\", client_ca = \"c.pem\" }",
            "forward_auth.tls.client_ca:",
        ),
        ("bogus = 1", "forward_auth"),
    ] {
        let e = load_str(&format!("[forward_auth]\n{toml}\n"), &[]).unwrap_err();
        assert!(e.to_string().starts_with(key), "{toml}: {e}");
    }
    // `/authz` is not `/auth`: a segment boundary decides.
    load_str("[forward_auth]\nenvoy_prefix = \"/authz\"\n", &[]).unwrap();
}

#[test]
fn string_arrays_take_a_comma_separated_env_value() {
    let c = load_str(
        "",
        &[
            ("TOKENGATE_FORWARD_AUTH__LISTEN", "127.0.0.1:8081"),
            ("TOKENGATE_FORWARD_AUTH__CALLERS", "10.0.0.0/8, 192.168.1.1"),
            ("TOKENGATE_PROXY__TRUSTED_PROXIES", "172.16.0.0/12"),
            ("TOKENGATE_FORWARD_AUTH__TRUSTED_HOPS", ""),
        ],
    )
    .unwrap();
    assert_eq!(
        c.forward_auth.listen,
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(
        c.forward_auth.callers,
        vec![
            "10.0.0.0/8".parse::<IpNet>().unwrap(),
            "192.168.1.1/32".parse().unwrap()
        ]
    );
    assert_eq!(
        c.proxy.trusted_proxies,
        vec!["172.16.0.0/12".parse::<IpNet>().unwrap()]
    );
    assert!(c.forward_auth.trusted_hops.is_empty());
    let e = load_str(
        "",
        &[("TOKENGATE_FORWARD_AUTH__CALLERS", "10.0.0.0/8,junk")],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("forward_auth.callers:"), "{e}");
}

#[test]
fn a_route_without_upstream_needs_the_forward_auth_listener() {
    let route = "[[routes]]\npath_prefix = \"/b/\"\naccess = \"security-director\"\n";
    let e = load_str(route, &[]).unwrap_err();
    assert!(e.to_string().starts_with("routes[0].upstream:"), "{e}");
    assert!(e.to_string().contains("forward_auth.listen"), "{e}");
    let c = load_str(
        &format!("[forward_auth]\nlisten = \"127.0.0.1:0\"\n{route}"),
        &[],
    )
    .unwrap();
    assert!(c.routes[0].upstream.is_none());
    // Upstream TLS keys mean nothing without an upstream.
    let e = load_str(
        &format!("[forward_auth]\nlisten = \"127.0.0.1:0\"\n{route}ca_file = \"ca.pem\"\n"),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("routes[0].ca_file:"), "{e}");
}

#[test]
fn a_key_set_with_a_single_underscore_is_an_error_naming_the_variable() {
    for var in [
        "TOKENGATE_USAGE_FLUSH_INTERVAL",
        "TOKENGATE_RATE_LIMIT_BACKEND",
        "TOKENGATE_FORWARD_AUTH_LISTEN",
        "TOKENGATE_PROXY_LISTEN",
    ] {
        let e = load_str("", &[(var, "5s")]).unwrap_err();
        assert!(e.to_string().starts_with(&format!("{var}:")), "{e}");
        assert!(e.to_string().contains("__"), "{e}");
    }
    // The CLI's variables and the tests' are not config keys.
    load_str(
        "",
        &[
            ("TOKENGATE_ADMIN_KEY", "k"),
            ("TOKENGATE_ADMIN_URL", "http://x"),
            ("TOKENGATE_TEST_REQUIRE", "postgres"),
            ("TOKENGATE_TEST_POSTGRES_URL", "postgres://x"),
        ],
    )
    .unwrap();
}

#[test]
fn webhooks_section_defaults_and_checks_its_endpoints() {
    let d = Config::defaults();
    assert_eq!(d.webhooks.max_age, Duration::from_secs(86_400));
    assert_eq!(d.webhooks.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(d.webhooks.expiry_notice, Duration::from_secs(7 * 86_400));
    assert!(d.webhooks.endpoints.is_empty());
    let c = load_str(
        "[webhooks]\nmax_age = \"2h\"\n[[webhooks.endpoints]]\n\
         url = \"https://hooks.example.com/p/s3cret\"\nevents = [\"token.*\", \"ip.denied\"]\n\
         ca_file = \"ca.pem\"\n",
        &[("TOKENGATE_WEBHOOKS__RETENTION", "10d")],
    )
    .unwrap();
    assert_eq!(c.webhooks.max_age, Duration::from_secs(7200));
    assert_eq!(c.webhooks.retention, Duration::from_secs(10 * 86_400));
    let e = &c.webhooks.endpoints[0];
    assert_eq!(e.secret_file, PathBuf::from("data/webhook.secret"));
    assert_eq!(e.ca_file, Some(PathBuf::from("ca.pem")));
    assert!(e.events.contains(crate::events::EventType::TokenExpiring));
    assert!(!e.events.contains(crate::events::EventType::IpFirstSeen));
    let endpoint = |body: &str| format!("[[webhooks.endpoints]]\n{body}\n");
    for (toml, key, says) in [
        (
            endpoint("url = \"ftp://h/x\"\nevents = [\"*\"]"),
            "webhooks.endpoints[0].url",
            "http:// or https://",
        ),
        (
            endpoint("url = \"https://u:pw@h/x\"\nevents = [\"*\"]"),
            "webhooks.endpoints[0].url",
            "no user name",
        ),
        (
            endpoint("url = \"https://h/x\"\nevents = [\"token.create\"]"),
            "webhooks.endpoints[0].events",
            "matches no event type",
        ),
        (
            endpoint("url = \"https://h/x\"\nevents = []"),
            "webhooks.endpoints[0].events",
            "lists no event type",
        ),
        (
            endpoint("url = \"http://h/x\"\nevents = [\"*\"]\nca_file = \"c\""),
            "webhooks.endpoints[0].ca_file",
            "only for an https://",
        ),
        (
            endpoint("url = \"https://h/x\"\nevents = [\"*\"]\ncolour = 1"),
            "colour",
            "unknown field",
        ),
        (
            format!(
                "{}{}",
                endpoint("url = \"https://h/x\"\nevents = [\"*\"]"),
                endpoint("url = \"https://h/x\"\nevents = [\"ip.*\"]")
            ),
            "webhooks.endpoints[1].url",
            "same URL",
        ),
        (
            "[webhooks]\nretention = \"1d\"\n".to_string(),
            "webhooks.retention",
            "at least webhooks.expiry_notice",
        ),
        (
            "[webhooks]\nmax_age = \"soon\"\n".to_string(),
            "webhooks.max_age",
            "soon",
        ),
    ] {
        let err = load_str(&toml, &[]).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{toml}: {err}");
        assert!(!err.contains("pw@") && !err.contains("s3cret"), "{err}");
    }
}

#[test]
fn webhook_endpoints_need_their_own_secrets_and_an_hour_of_retention() {
    let two = "[[webhooks.endpoints]]\nurl = \"https://a/x\"\nevents = [\"*\"]\n\
               [[webhooks.endpoints]]\nurl = \"https://b/x\"\nevents = [\"*\"]\n";
    let err = load_str(two, &[]).unwrap_err().to_string();
    assert!(
        err.contains("webhooks.endpoints[1].secret_file") && err.contains("endpoints[0]"),
        "{err}"
    );
    let ok = format!("{two}secret_file = \"data/b.secret\"\n");
    assert_eq!(load_str(&ok, &[]).unwrap().webhooks.endpoints.len(), 2);
    let err = load_str(
        "[webhooks]\nretention = \"30m\"\nexpiry_notice = \"10m\"\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("webhooks.retention") && err.contains("1h"),
        "{err}"
    );
}

#[test]
fn usage_history_is_a_config_key_of_at_least_an_hour() {
    assert_eq!(
        Config::defaults().usage.history,
        Duration::from_secs(90 * 86400)
    );
    let c = load_str("[usage]\nhistory = \"7d\"\n", &[]).unwrap();
    assert_eq!(c.usage.history, Duration::from_secs(7 * 86400));
    let c = load_str("", &[("TOKENGATE_USAGE__HISTORY", "2h")]).unwrap();
    assert_eq!(c.usage.history, Duration::from_secs(7200));
    for (value, why) in [("\"soon\"", "invalid duration"), ("\"30m\"", "at least 1h")] {
        let e = load_str(&format!("[usage]\nhistory = {value}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("usage.history:") && e.contains(why), "{e}");
    }
}
