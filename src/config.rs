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
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::net::canonical_net;
use crate::proxy::path::normalise;
use crate::proxy::route::normalise_host;
use crate::token::Access;

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

// === raw layer: mirrors the file ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub lifecycle: RawLifecycle,
    #[serde(default)]
    pub audit: RawAudit,
    /// `None` when the file has no `[[routes]]`.
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub listen: String,
    pub trusted_proxies: Vec<String>,
    pub forward_authorization: bool,
    pub upstream_timeout: String,
    pub access_log: bool,
    pub failed_auth_limit: u32,
    pub max_header_bytes: u64,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_connections: u64,
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: String,
    pub tls: Option<RawTls>,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:8080".into(),
            trusted_proxies: Vec::new(),
            forward_authorization: false,
            upstream_timeout: "30s".into(),
            access_log: true,
            failed_auth_limit: 20,
            max_header_bytes: 32768,
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_connections: 10000,
            h2_max_concurrent_streams: 100,
            shutdown_grace: "30s".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: String,
    pub key_file: String,
    pub allow_plaintext: bool,
    pub metrics_public: bool,
    pub tls: Option<RawTls>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9090".into(),
            key_file: "data/admin.key".into(),
            allow_plaintext: false,
            metrics_public: false,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub url: String,
    pub outage_grace: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            url: "sqlite://data/tokengate.db".into(),
            outage_grace: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUsage {
    pub flush_interval: String,
    pub max_ips_per_token: u64,
}

impl Default for RawUsage {
    fn default() -> Self {
        RawUsage {
            flush_interval: "1s".into(),
            max_ips_per_token: 10000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    pub inactive_after: String,
    pub delete_after: String,
    pub sweep_interval: String,
}

impl Default for RawLifecycle {
    fn default() -> Self {
        RawLifecycle {
            inactive_after: "30d".into(),
            delete_after: "90d".into(),
            sweep_interval: "1m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    pub retention: String,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            retention: "400d".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: String,
    #[serde(default)]
    pub host: Option<String>,
    pub access: String,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub preserve_host: bool,
    #[serde(default)]
    pub forward_authorization: Option<bool>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// The routes of the built-in defaults (and of the shipped `config/tokengate.toml`).
pub fn default_routes() -> Vec<RawRoute> {
    let route = |prefix: &str, access: &str, upstream: &str| RawRoute {
        path_prefix: prefix.into(),
        host: None,
        access: access.into(),
        upstream: upstream.into(),
        strip_prefix: true,
        preserve_host: false,
        forward_authorization: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        tls_server_name: None,
    };
    vec![
        route("/sd/", "security-director", "http://127.0.0.1:9001"),
        route("/feeds/", "third-party-feeds", "http://127.0.0.1:9002"),
    ]
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
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub key_file: PathBuf,
    pub allow_plaintext: bool,
    pub metrics_public: bool,
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
}

#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    pub inactive_after: Duration,
    pub delete_after: Duration,
    pub sweep_interval: Duration,
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
    /// `http://host:port` plus an optional base path (no trailing slash).
    pub upstream: http::Uri,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    pub forward_authorization: bool,
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
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix(ENV_PREFIX)
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TOKENGATE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let merged = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let value: serde_json::Value = merged
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        if file.is_none() && raw.routes.is_none() {
            raw.routes = Some(default_routes());
        }
        Ok(raw)
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        let p = self.proxy;
        if p.tls.is_some() {
            return Err(invalid(
                "proxy.tls",
                "TLS termination is not built yet in this version",
            ));
        }
        let proxy = ProxyConfig {
            listen: addr("proxy.listen", &p.listen)?,
            trusted_proxies: p
                .trusted_proxies
                .iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map(canonical_net)
                        .map_err(|_| {
                            invalid("proxy.trusted_proxies", format!("invalid CIDR {s:?}"))
                        })
                })
                .collect::<Result<_, _>>()?,
            forward_authorization: p.forward_authorization,
            upstream_timeout: positive("proxy.upstream_timeout", &p.upstream_timeout)?,
            access_log: p.access_log,
            failed_auth_limit: p.failed_auth_limit,
            max_header_bytes: range("proxy.max_header_bytes", p.max_header_bytes, 1024, 1 << 20)?,
            header_read_timeout: positive("proxy.header_read_timeout", &p.header_read_timeout)?,
            idle_timeout: positive("proxy.idle_timeout", &p.idle_timeout)?,
            max_connections: range("proxy.max_connections", p.max_connections, 1, 1 << 24)?,
            h2_max_concurrent_streams: u32::try_from(range(
                "proxy.h2_max_concurrent_streams",
                u64::from(p.h2_max_concurrent_streams),
                1,
                10_000,
            )?)
            .unwrap_or(100),
            shutdown_grace: duration("proxy.shutdown_grace", &p.shutdown_grace)?,
        };
        let a = self.admin;
        if a.tls.is_some() {
            return Err(invalid(
                "admin.tls",
                "TLS termination is not built yet in this version",
            ));
        }
        let admin = AdminConfig {
            listen: addr("admin.listen", &a.listen)?,
            key_file: nonempty_path("admin.key_file", &a.key_file)?,
            allow_plaintext: a.allow_plaintext,
            metrics_public: a.metrics_public,
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
        };
        let lifecycle = LifecycleConfig {
            inactive_after: positive("lifecycle.inactive_after", &self.lifecycle.inactive_after)?,
            delete_after: positive("lifecycle.delete_after", &self.lifecycle.delete_after)?,
            sweep_interval: positive("lifecycle.sweep_interval", &self.lifecycle.sweep_interval)?,
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
        let mut routes = Vec::new();
        let mut seen = HashSet::new();
        for (i, r) in self.routes.unwrap_or_default().into_iter().enumerate() {
            let route = validate_route(i, r, proxy.forward_authorization)?;
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
            routes,
        })
    }
}

fn validate_route(i: usize, r: RawRoute, global_fwd: bool) -> Result<RouteConfig, ConfigError> {
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
                .ok_or_else(|| invalid(key("host"), format!("invalid host {h:?}")))?,
        ),
    };
    let access = Access::parse_one(&r.access).ok_or_else(|| {
        invalid(
            key("access"),
            format!(
                "unknown access type {:?}: expected security-director or third-party-feeds",
                r.access
            ),
        )
    })?;
    let upstream: http::Uri = r
        .upstream
        .parse()
        .map_err(|_| invalid(key("upstream"), format!("invalid URL {:?}", r.upstream)))?;
    match upstream.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                key("upstream"),
                "https:// upstreams are not built yet in this version",
            ))
        }
        _ => {
            return Err(invalid(
                key("upstream"),
                format!("{:?} must be an http:// URL", r.upstream),
            ))
        }
    }
    if upstream.authority().is_none() || upstream.query().is_some() {
        return Err(invalid(
            key("upstream"),
            format!("{:?} must be http://host:port[/base]", r.upstream),
        ));
    }
    if r.ca_file.is_some()
        || r.client_cert.is_some()
        || r.client_key.is_some()
        || r.tls_server_name.is_some()
    {
        return Err(invalid(
            key("ca_file"),
            "upstream TLS settings need an https:// upstream",
        ));
    }
    Ok(RouteConfig {
        path_prefix: prefix,
        host,
        access,
        upstream,
        strip_prefix: r.strip_prefix,
        preserve_host: r.preserve_host,
        forward_authorization: r.forward_authorization.unwrap_or(global_fwd),
    })
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
        return Ok(StoreUrl::Postgres(s.to_string()));
    }
    Err(invalid(
        "store.url",
        "expected sqlite://PATH or postgres://...",
    ))
}

#[cfg(test)]
mod tests {
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
        let e = load_str("[[routes]]\npath_prefix = \"/a/\"\naccess = \"root\"\nupstream = \"http://127.0.0.1:1\"\n", &[]).unwrap_err();
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
    fn postgres_urls_are_redacted_in_debug() {
        let u = StoreUrl::Postgres("postgres://u:hunter2@db/x".into());
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}
