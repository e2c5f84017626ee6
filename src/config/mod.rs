//! Configuration: the TOML file, `TOKENGATE_<SECTION>__<KEY>` environment overrides, and their
//! validation into a typed [`Config`].
//!
//! Two layers, in the ripgrep low/high style: serde "raw" structs that only mirror the file
//! (`deny_unknown_fields`, strings for durations and addresses), then [`RawConfig::validate`]
//! which turns them into typed values and names the key in every error
//! (`usage.flush_interval: invalid duration "soon"`). Read once at start-up; never touches the
//! network or the store.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::access::{Access, AccessType, AccessTypes};
use crate::net::canonical_net;
use crate::uri::host::normalise_host;
use crate::uri::path::normalise;

mod raw;
#[cfg(test)]
mod tests;

pub use raw::*;

/// The file used when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/tokengate.toml";
/// Env prefix of config overrides; only variables with `__` after it are config keys.
pub const ENV_PREFIX: &str = "TOKENGATE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Load(String),
    /// A key with a bad value: `key: message`.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// === typed layer ===

#[derive(Debug, Clone)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub usage: UsageConfig,
    pub lifecycle: LifecycleConfig,
    pub audit: AuditConfig,
    pub rate_limit: RateLimitConfig,
    pub forward_auth: ForwardAuthConfig,
    pub webhooks: WebhooksConfig,
    /// The configured access types (`[[access_types]]`), shared with the index and the admin API.
    pub access_types: Arc<AccessTypes>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub forward_authorization: bool,
    pub upstream_timeout: Duration,
    pub access_log: bool,
    /// 0 = off.
    pub failed_auth_limit: u32,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// 0 = no cap; trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: Duration,
    /// `POST /_tokengate/revoke` on the proxy listener (SPEC §10); false = routed like any path.
    pub revocation: bool,
    /// Revocation requests per client IP per minute (then 429); 0 = no limit.
    pub revoke_limit: u32,
    /// `proxy.tls`: terminate TLS on the proxy listener (never with `client_ca`).
    pub tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub key_file: PathBuf,
    pub allow_plaintext: bool,
    pub metrics_public: bool,
    /// `admin.tls`: terminate TLS on the admin listener, optionally requiring client
    /// certificates signed by `client_ca`.
    pub tls: Option<ServerTlsConfig>,
}

/// A TLS listener's PEM files. Only the paths are config: `tls` reads the files at start-up
/// and again on every reload (SIGHUP, or a change on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; `None` = no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// TLS settings of an `https://` route (all `None`: the platform's roots, no client
/// certificate, the server name from the upstream URL).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// Verify the upstream against this CA bundle instead of the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS to the upstream (both or neither).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name verified in the upstream's certificate (and sent as SNI) instead of its host.
    pub server_name: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            // A PostgreSQL URL may carry a password: never print it.
            StoreUrl::Postgres(_) => f.write_str("postgres://<redacted>"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: StoreUrl,
    pub outage_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UsageConfig {
    pub flush_interval: Duration,
    pub max_ips_per_token: usize,
    /// How long the hourly usage counters are kept (SPEC §12): at least an hour.
    pub history: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    pub inactive_after: Duration,
    pub delete_after: Duration,
    pub sweep_interval: Duration,
    /// When set, every token created or patched must carry an `expires_at` at most this far
    /// ahead (SPEC §1).
    pub max_expiry: Option<Duration>,
    /// The longest `grace` a regenerate may ask for.
    pub max_rotation_grace: Duration,
}

/// `[rate_limit]`: where per-token budgets are counted (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// What a check does when Redis cannot answer in time.
    pub on_backend_error: OnBackendError,
    /// Also send the RateLimit headers on forwarded responses.
    pub headers: bool,
    /// How long one Redis check may take (an addition: `rate_limit.redis_timeout`).
    pub redis_timeout: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    /// Each instance counts alone.
    Local,
    /// One budget per token in Redis, shared by every instance (the URL may hold a password:
    /// never logged).
    Redis { url: String },
}

/// Never prints the URL: it may hold a password.
impl std::fmt::Debug for RateLimitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimitBackend::Local => f.write_str("Local"),
            RateLimitBackend::Redis { .. } => f.write_str("Redis { url: <redacted> }"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendError {
    /// Let the request through (and count the backend error).
    Allow,
    /// Answer 503 `rate_limit_unavailable`.
    Deny,
}

/// The file's sections, as env overrides name them (`TOKENGATE_<SECTION>__<KEY>`).
const SECTIONS: [&str; 9] = [
    "proxy",
    "admin",
    "store",
    "usage",
    "lifecycle",
    "audit",
    "rate_limit",
    "forward_auth",
    "webhooks",
];

/// The section a `TOKENGATE_<SECTION>_<KEY>` variable (one underscore) was meant for, if
/// any; `TOKENGATE_ADMIN_KEY` and `TOKENGATE_ADMIN_URL` are the CLI's, not config keys.
fn misspelt_section(rest: &str) -> Option<&'static str> {
    if matches!(rest, "ADMIN_KEY" | "ADMIN_URL") {
        return None;
    }
    SECTIONS.into_iter().find(|s| {
        rest.len() > s.len() + 1
            && rest.as_bytes()[s.len()] == b'_'
            && rest[..s.len()].eq_ignore_ascii_case(s)
    })
}

/// `[forward_auth]` (SPEC §9): the listener that answers authorization checks for nginx,
/// Traefik, Caddy and Envoy.
#[derive(Debug, Clone)]
pub struct ForwardAuthConfig {
    /// `None` = the listener is off (the default).
    pub listen: Option<SocketAddr>,
    /// Peers allowed to ask (else 403 `untrusted_caller`).
    pub callers: Vec<IpNet>,
    /// Proxies between the caller and the client, skipped in the `X-Forwarded-For` walk.
    pub trusted_hops: Vec<IpNet>,
    /// Envoy's `path_prefix`: a leading `/`, no trailing `/`, not `/auth`.
    pub envoy_prefix: String,
    pub tls: Option<ServerTlsConfig>,
}

/// `[webhooks]` (SPEC §10).
#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    /// A delivery is retried until it is this old, then `failed`.
    pub max_age: Duration,
    /// Delivered and failed rows are kept this long.
    pub retention: Duration,
    /// `token.expiring` this long before `expires_at`.
    pub expiry_notice: Duration,
    pub endpoints: Vec<WebhookEndpointConfig>,
}

#[derive(Debug, Clone)]
pub struct WebhookEndpointConfig {
    /// `http://` or `https://`; never logged or shown beyond scheme, host and port.
    pub url: http::Uri,
    pub secret_file: PathBuf,
    pub events: crate::events::EventSet,
    /// Verify an `https://` endpoint against this CA bundle instead of the platform's roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub path_prefix: String,
    pub host: Option<String>,
    pub access: Access,
    /// `http://host:port` plus an optional base path (no trailing slash); `None` on a route
    /// served only by the forward-auth listener (the proxy listener answers it 404).
    pub upstream: Option<http::Uri>,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub forward_authorization: bool,
    /// Only for `https://` upstreams.
    pub tls: UpstreamTls,
}

// === loading ===

impl Config {
    /// Loads `explicit` (must exist), else `config/tokengate.toml` if present, else the built-in
    /// defaults; then applies `TOKENGATE_<SECTION>__<KEY>` variables from `env`.
    pub fn load(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file = match explicit {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_path_buf())),
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                p.exists().then_some(p)
            }
        };
        RawConfig::load(file.as_deref(), env)?.validate()
    }

    /// The built-in defaults, without reading files or env (for tests and `dev`).
    pub fn defaults() -> Config {
        RawConfig::load(None, Vec::new())
            .and_then(RawConfig::validate)
            .expect("the built-in defaults are valid")
    }
}

impl RawConfig {
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<RawConfig, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        // Only `TOKENGATE_<SECTION>__<KEY>` are config keys; `TOKENGATE_ADMIN_KEY` and friends
        // are not, and must not trip the unknown-key check.
        let mut overrides = config::Map::<String, String>::new();
        // `section.key` (as the TOML names it) → the variable that set it, so that an unknown
        // key set from the environment is reported by the variable's name.
        let mut from_env = std::collections::BTreeMap::<String, String>::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.contains("__") {
                from_env.insert(rest.to_ascii_lowercase().replace("__", "."), k.clone());
                overrides.insert(k, v);
            } else if let Some(section) = misspelt_section(rest) {
                // `TOKENGATE_USAGE_FLUSH_INTERVAL`: meant as a key, and silently ignored it
                // would leave the default in force.
                return Err(ConfigError::Invalid {
                    key: k.clone(),
                    message: format!(
                        "not a config key: a key of [{section}] is set with a double underscore \
                         (TOKENGATE_{}__{})",
                        section.to_ascii_uppercase(),
                        &rest[section.len() + 1..]
                    ),
                });
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("TOKENGATE")
                .prefix_separator("_")
                .separator("__")
                // Values stay strings: a numeric-looking duration ("0") or path must not turn
                // into a number; the few numeric and boolean keys parse them (`lenient`).
                .try_parsing(false)
                .source(Some(overrides)),
        );
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let value: serde_json::Value = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // An unknown key (or section) that only the environment names: the variable.
            let var = message
                .starts_with("unknown field")
                .then(|| {
                    from_env.iter().find(|(toml, _)| {
                        toml.as_str() == path || toml.split('.').next() == Some(path.as_str())
                    })
                })
                .flatten();
            match var {
                Some((_, var)) => ConfigError::Invalid {
                    key: var.clone(),
                    message: format!("not a config key ({path}: {message})"),
                },
                None => ConfigError::Invalid { key: path, message },
            }
        })?;
        if file.is_none() && raw.routes.is_none() {
            raw.routes = Some(default_routes());
        }
        Ok(raw)
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let p = self.proxy;
        let proxy = ProxyConfig {
            listen: addr("proxy.listen", &p.listen)?,
            trusted_proxies: cidrs("proxy.trusted_proxies", &p.trusted_proxies)?,
            forward_authorization: p.forward_authorization,
            upstream_timeout: positive("proxy.upstream_timeout", &p.upstream_timeout)?,
            access_log: p.access_log,
            failed_auth_limit: p.failed_auth_limit,
            max_header_bytes: range("proxy.max_header_bytes", p.max_header_bytes, 1024, 1 << 20)?,
            header_read_timeout: positive("proxy.header_read_timeout", &p.header_read_timeout)?,
            idle_timeout: positive("proxy.idle_timeout", &p.idle_timeout)?,
            max_connections: range("proxy.max_connections", p.max_connections, 1, 1 << 24)?,
            max_connections_per_ip: range(
                "proxy.max_connections_per_ip",
                p.max_connections_per_ip,
                0,
                1 << 24,
            )?,
            h2_max_concurrent_streams: u32::try_from(range(
                "proxy.h2_max_concurrent_streams",
                u64::from(p.h2_max_concurrent_streams),
                1,
                10_000,
            )?)
            .unwrap_or(100),
            shutdown_grace: duration("proxy.shutdown_grace", &p.shutdown_grace)?,
            revocation: p.revocation,
            revoke_limit: p.revoke_limit,
            tls: server_tls("proxy.tls", p.tls.as_ref())?,
        };
        if proxy.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
            return Err(invalid(
                "proxy.tls.client_ca",
                "client certificates are only checked on the admin listener (admin.tls.client_ca)",
            ));
        }
        let a = self.admin;
        let admin = AdminConfig {
            listen: addr("admin.listen", &a.listen)?,
            key_file: nonempty_path("admin.key_file", &a.key_file)?,
            allow_plaintext: a.allow_plaintext,
            metrics_public: a.metrics_public,
            tls: server_tls("admin.tls", a.tls.as_ref())?,
        };
        let store = StoreConfig {
            url: store_url(&self.store.url)?,
            outage_grace: duration("store.outage_grace", &self.store.outage_grace)?,
        };
        let usage = UsageConfig {
            flush_interval: positive("usage.flush_interval", &self.usage.flush_interval)?,
            max_ips_per_token: range(
                "usage.max_ips_per_token",
                self.usage.max_ips_per_token,
                1,
                10_000_000,
            )?,
            history: duration("usage.history", &self.usage.history)?,
        };
        if usage.history < Duration::from_secs(3600) {
            return Err(invalid(
                "usage.history",
                format!(
                    "must be at least 1h (hourly counters), got {:?}",
                    self.usage.history
                ),
            ));
        }
        let lifecycle = LifecycleConfig {
            inactive_after: positive("lifecycle.inactive_after", &self.lifecycle.inactive_after)?,
            delete_after: positive("lifecycle.delete_after", &self.lifecycle.delete_after)?,
            sweep_interval: positive("lifecycle.sweep_interval", &self.lifecycle.sweep_interval)?,
            max_expiry: match &self.lifecycle.max_expiry {
                None => None,
                Some(s) => Some(positive("lifecycle.max_expiry", s)?),
            },
            max_rotation_grace: duration(
                "lifecycle.max_rotation_grace",
                &self.lifecycle.max_rotation_grace,
            )?,
        };
        if lifecycle.delete_after <= lifecycle.inactive_after {
            return Err(invalid(
                "lifecycle.delete_after",
                format!(
                    "must exceed lifecycle.inactive_after ({} <= {})",
                    self.lifecycle.delete_after, self.lifecycle.inactive_after
                ),
            ));
        }
        let audit = AuditConfig {
            retention: positive("audit.retention", &self.audit.retention)?,
        };
        let rate_limit = rate_limit(&self.rate_limit)?;
        let forward_auth = forward_auth(&self.forward_auth)?;
        let webhooks = webhooks(&self.webhooks)?;
        let access_types = Arc::new(access_types(self.access_types)?);
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in self.routes.unwrap_or_default().into_iter().enumerate() {
            let route = validate_route(i, r, proxy.forward_authorization, &access_types)?;
            if route.upstream.is_none() && forward_auth.listen.is_none() {
                return Err(invalid(
                    format!("routes[{i}].upstream"),
                    format!(
                        "route {:?} has no upstream: one is needed unless forward_auth.listen is set \
                         (a route without upstream serves only forward-auth checks)",
                        route.path_prefix
                    ),
                ));
            }
            if !seen.insert((route.host.clone(), route.path_prefix.clone())) {
                return Err(invalid(
                    format!("routes[{i}].path_prefix"),
                    format!("duplicate route for {:?}", route.path_prefix),
                ));
            }
            routes.push(route);
        }
        Ok(Config {
            proxy,
            admin,
            store,
            usage,
            lifecycle,
            audit,
            rate_limit,
            forward_auth,
            webhooks,
            access_types,
            routes,
        })
    }
}

/// A list of CIDRs (a bare IP is its /32 or /128), canonical (IPv4-mapped IPv6 as IPv4).
fn cidrs(key: &str, raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(canonical_net)
                .map_err(|_| invalid(key, format!("invalid CIDR {s:?}")))
        })
        .collect()
}

fn forward_auth(f: &RawForwardAuth) -> Result<ForwardAuthConfig, ConfigError> {
    let listen = match &f.listen {
        None => None,
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(addr("forward_auth.listen", s.trim())?),
    };
    let prefix = f.envoy_prefix.as_str();
    let key = "forward_auth.envoy_prefix";
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(invalid(
            key,
            format!("{prefix:?} must start with '/' and not end with '/'"),
        ));
    }
    if !matches!(normalise(prefix), Ok(n) if n == prefix) {
        return Err(invalid(
            key,
            format!("{prefix:?} is not a normalised path (dot segments, '//' or escapes)"),
        ));
    }
    let under = |p: &str| prefix == p || prefix.starts_with(&format!("{p}/"));
    if under("/auth") || under("/_tokengate") {
        return Err(invalid(
            key,
            format!(
                "{prefix:?} would hide /auth or /_tokengate/revoke on the forward-auth listener"
            ),
        ));
    }
    let tls = server_tls("forward_auth.tls", f.tls.as_ref())?;
    if tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        return Err(invalid(
            "forward_auth.tls.client_ca",
            "client certificates are only checked on the admin listener (admin.tls.client_ca); \
             forward_auth.callers says who may ask",
        ));
    }
    Ok(ForwardAuthConfig {
        listen,
        callers: cidrs("forward_auth.callers", &f.callers)?,
        trusted_hops: cidrs("forward_auth.trusted_hops", &f.trusted_hops)?,
        envoy_prefix: prefix.to_string(),
        tls,
    })
}

fn webhooks(w: &RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
    let max_age = positive("webhooks.max_age", &w.max_age)?;
    let retention = positive("webhooks.retention", &w.retention)?;
    let expiry_notice = positive("webhooks.expiry_notice", &w.expiry_notice)?;
    if retention < Duration::from_secs(3600) {
        // ip.denied's once-per-hour and 100-per-hour limits count the rows of the hour.
        return Err(invalid("webhooks.retention", "must be at least 1h"));
    }
    if retention < expiry_notice {
        // A pruned token.expiring row would be written again while the token is still
        // within its notice.
        return Err(invalid(
            "webhooks.retention",
            format!(
                "must be at least webhooks.expiry_notice ({} < {})",
                w.retention, w.expiry_notice
            ),
        ));
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for (i, e) in w.endpoints.iter().enumerate() {
        let key = |k: &str| format!("webhooks.endpoints[{i}].{k}");
        // The URL may hold a secret in its path or query: errors never repeat it.
        let url: http::Uri = e
            .url
            .trim()
            .parse()
            .map_err(|_| invalid(key("url"), "not a valid URL"))?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid(key("url"), "must start with http:// or https://")),
        };
        let authority = url.authority().map(|a| a.as_str()).unwrap_or("");
        if url.host().is_none_or(str::is_empty) || authority.contains('@') {
            return Err(invalid(
                key("url"),
                "needs a host, and no user name or password (put a secret in the path instead)",
            ));
        }
        if !seen.insert(url.to_string()) {
            return Err(invalid(key("url"), "the same URL as an earlier endpoint"));
        }
        let events =
            crate::events::EventSet::parse(&e.events).map_err(|m| invalid(key("events"), m))?;
        let ca_file = match &e.ca_file {
            None => None,
            Some(_) if !https => {
                return Err(invalid(key("ca_file"), "only for an https:// endpoint"))
            }
            Some(p) => Some(nonempty_path(&key("ca_file"), p)?),
        };
        let secret_file = nonempty_path(&key("secret_file"), &e.secret_file)?;
        if let Some(j) = endpoints
            .iter()
            .position(|o: &WebhookEndpointConfig| o.secret_file == secret_file)
        {
            return Err(invalid(
                key("secret_file"),
                format!(
                    "the same file as webhooks.endpoints[{j}].secret_file: each endpoint needs \
                     its own secret (one receiver could otherwise sign events for the other)"
                ),
            ));
        }
        endpoints.push(WebhookEndpointConfig {
            url,
            secret_file,
            events,
            ca_file,
        });
    }
    Ok(WebhooksConfig {
        max_age,
        retention,
        expiry_notice,
        endpoints,
    })
}

fn rate_limit(r: &RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    let backend = match r.backend.as_str() {
        "local" => RateLimitBackend::Local,
        "redis" => {
            // Checked here so a typo stops start-up naming the key; never echoed (a password).
            let url = r.redis_url.trim();
            if url.starts_with("rediss://") {
                return Err(invalid(
                    "rate_limit.redis_url",
                    "rediss:// (Redis over TLS) is not supported yet: use redis:// on a trusted network",
                ));
            }
            if !url.starts_with("redis://") || url.len() == "redis://".len() {
                return Err(invalid(
                    "rate_limit.redis_url",
                    "expected redis://[user:password@]host[:port][/db]",
                ));
            }
            RateLimitBackend::Redis {
                url: url.to_string(),
            }
        }
        other => {
            return Err(invalid(
                "rate_limit.backend",
                format!("{other:?}: expected \"local\" or \"redis\""),
            ))
        }
    };
    let on_backend_error = match r.on_backend_error.as_str() {
        "allow" => OnBackendError::Allow,
        "deny" => OnBackendError::Deny,
        other => {
            return Err(invalid(
                "rate_limit.on_backend_error",
                format!("{other:?}: expected \"allow\" or \"deny\""),
            ))
        }
    };
    let redis_timeout = positive("rate_limit.redis_timeout", &r.redis_timeout)?;
    if redis_timeout > Duration::from_secs(5) {
        return Err(invalid(
            "rate_limit.redis_timeout",
            "must be at most 5s (it is spent on every request while Redis is slow)",
        ));
    }
    Ok(RateLimitConfig {
        backend,
        on_backend_error,
        headers: r.headers,
        redis_timeout,
    })
}

/// `[[access_types]]`, or the seed's two when the file declares none.
fn access_types(raw: Option<Vec<RawAccessType>>) -> Result<AccessTypes, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AccessTypes::seed());
    };
    let types = raw
        .into_iter()
        .map(|t| AccessType {
            name: t.name,
            label: t.label,
        })
        .collect();
    AccessTypes::new(types).map_err(|e| {
        let key = match e.index {
            Some(i) => format!("access_types[{i}].{}", e.field),
            None => "access_types".to_string(),
        };
        invalid(key, e.message)
    })
}

fn validate_route(
    i: usize,
    r: RawRoute,
    global_fwd: bool,
    types: &AccessTypes,
) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let prefix = r.path_prefix;
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(invalid(
            key("path_prefix"),
            format!("{prefix:?} must start and end with '/'"),
        ));
    }
    match normalise(&prefix) {
        Ok(n) if n == prefix => {}
        _ => {
            return Err(invalid(
                key("path_prefix"),
                format!("{prefix:?} is not a normalised path (dot segments, '//' or escapes)"),
            ))
        }
    }
    let host = match r.host {
        None => None,
        Some(h) => Some(
            normalise_host(&h)
                .ok_or_else(|| invalid(key("host"), format!("invalid host {h:?}")))?
                .into_owned(),
        ),
    };
    let access = types.bit(&r.access).ok_or_else(|| {
        invalid(
            key("access"),
            format!("route {prefix:?}: {}", types.unknown_route_type(&r.access)),
        )
    })?;
    let upstream = match &r.upstream {
        None => None,
        Some(u) => Some(upstream_url(&key, u)?),
    };
    let https = upstream
        .as_ref()
        .is_some_and(|u| u.scheme_str() == Some("https"));
    let tls = upstream_tls(
        &key,
        [
            &r.ca_file,
            &r.client_cert,
            &r.client_key,
            &r.tls_server_name,
        ],
        https,
    )?;
    Ok(RouteConfig {
        path_prefix: prefix,
        host,
        access,
        upstream,
        strip_prefix: r.strip_prefix,
        preserve_host: r.preserve_host,
        forward_authorization: r.forward_authorization.unwrap_or(global_fwd),
        tls,
    })
}

/// A route's `upstream`: `http(s)://host[:port][/base]`.
fn upstream_url(key: &dyn Fn(&str) -> String, raw: &str) -> Result<http::Uri, ConfigError> {
    let upstream: http::Uri = raw
        .parse()
        .map_err(|_| invalid(key("upstream"), format!("invalid URL {raw:?}")))?;
    if !matches!(upstream.scheme_str(), Some("http" | "https")) {
        return Err(invalid(
            key("upstream"),
            format!("{raw:?} must be an http:// or https:// URL"),
        ));
    }
    if upstream.authority().is_none() || upstream.query().is_some() {
        return Err(invalid(
            key("upstream"),
            format!("{raw:?} must be http(s)://host[:port][/base]"),
        ));
    }
    Ok(upstream)
}

/// `proxy.tls` / `admin.tls`: both files named; the files themselves are read by `tls` at
/// start-up (so that the CLI, which reads this config too, never needs the server's key).
fn server_tls(section: &str, raw: Option<&RawTls>) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let Some(t) = raw else { return Ok(None) };
    Ok(Some(ServerTlsConfig {
        cert: nonempty_path(&format!("{section}.cert"), &t.cert)?,
        key: nonempty_path(&format!("{section}.key"), &t.key)?,
        client_ca: match &t.client_ca {
            None => None,
            Some(c) => Some(nonempty_path(&format!("{section}.client_ca"), c)?),
        },
    }))
}

/// A route's upstream TLS keys: only with `https://`, client certificate and key together,
/// a server name that is a DNS name or an IP address.
fn upstream_tls(
    key: &dyn Fn(&str) -> String,
    [ca_file, client_cert, client_key, server_name]: [&Option<String>; 4],
    https: bool,
) -> Result<UpstreamTls, ConfigError> {
    let path = |k: &str, v: &Option<String>| match v {
        None => Ok(None),
        Some(s) => nonempty_path(&key(k), s).map(Some),
    };
    let tls = UpstreamTls {
        ca_file: path("ca_file", ca_file)?,
        client_cert: path("client_cert", client_cert)?,
        client_key: path("client_key", client_key)?,
        server_name: server_name.clone(),
    };
    if !https {
        let set = [
            ("ca_file", tls.ca_file.is_some()),
            ("client_cert", tls.client_cert.is_some()),
            ("client_key", tls.client_key.is_some()),
            ("tls_server_name", tls.server_name.is_some()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, is_set)| *is_set) {
            return Err(invalid(key(k), "only applies to an https:// upstream"));
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => return Err(invalid(key("client_key"), "needed with client_cert")),
        (None, Some(_)) => return Err(invalid(key("client_cert"), "needed with client_key")),
        _ => {}
    }
    if let Some(name) = &tls.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            return Err(invalid(
                key("tls_server_name"),
                format!("{name:?} is not a DNS name or an IP address"),
            ));
        }
    }
    Ok(tls)
}

fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid(key, format!("invalid address {s:?} (expected IP:PORT)")))
}

/// Parses a humantime duration (`"500ms"`, `"2s"`, `"30d"`); `"0"` is zero.
pub fn duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|_| invalid(key, format!("invalid duration {s:?}")))
}

fn positive(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, s)?;
    if d.is_zero() {
        return Err(invalid(
            key,
            format!("must be greater than zero, got {s:?}"),
        ));
    }
    Ok(d)
}

fn range(key: &str, v: u64, min: u64, max: u64) -> Result<usize, ConfigError> {
    if v < min || v > max {
        return Err(invalid(
            key,
            format!("{v} is out of range ({min} to {max})"),
        ));
    }
    usize::try_from(v).map_err(|_| invalid(key, format!("{v} is too large")))
}

fn nonempty_path(key: &str, s: &str) -> Result<PathBuf, ConfigError> {
    if s.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(PathBuf::from(s))
}

fn store_url(s: &str) -> Result<StoreUrl, ConfigError> {
    if let Some(path) = s.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(invalid("store.url", "sqlite:// needs a file path"));
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        // Checked here so a typo stops start-up naming the key; the driver's message names
        // the option at fault, never the URL (which may carry a password).
        crate::store::postgres::tls::PgUrl::parse(s).map_err(|e| invalid("store.url", e))?;
        return Ok(StoreUrl::Postgres(s.to_string()));
    }
    Err(invalid(
        "store.url",
        "expected sqlite://PATH or postgres://...",
    ))
}
