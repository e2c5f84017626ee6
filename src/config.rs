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
use crate::token::Access;
use crate::uri::host::normalise_host;
use crate::uri::path::normalise;

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
    #[serde(deserialize_with = "lenient")]
    pub forward_authorization: bool,
    pub upstream_timeout: String,
    #[serde(deserialize_with = "lenient")]
    pub access_log: bool,
    #[serde(deserialize_with = "lenient")]
    pub failed_auth_limit: u32,
    #[serde(deserialize_with = "lenient")]
    pub max_header_bytes: u64,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    #[serde(deserialize_with = "lenient")]
    pub max_connections: u64,
    #[serde(deserialize_with = "lenient")]
    pub max_connections_per_ip: u64,
    #[serde(deserialize_with = "lenient")]
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
            max_connections_per_ip: 1000,
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
    #[serde(deserialize_with = "lenient")]
    pub allow_plaintext: bool,
    #[serde(deserialize_with = "lenient")]
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
    #[serde(deserialize_with = "lenient")]
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

/// Accepts a typed value (from the file) or its text (from an env override).
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TypedOrText<T> {
        Typed(T),
        Text(String),
    }
    match TypedOrText::<T>::deserialize(d)? {
        TypedOrText::Typed(v) => Ok(v),
        TypedOrText::Text(s) => s
            .trim()
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid value {s:?}: {e}"))),
    }
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
    /// 0 = no cap; trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    pub h2_max_concurrent_streams: u32,
    pub shutdown_grace: Duration,
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
                .ok_or_else(|| invalid(key("host"), format!("invalid host {h:?}")))?
                .into_owned(),
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
    let https = match upstream.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(invalid(
                key("upstream"),
                format!("{:?} must be an http:// or https:// URL", r.upstream),
            ))
        }
    };
    if upstream.authority().is_none() || upstream.query().is_some() {
        return Err(invalid(
            key("upstream"),
            format!("{:?} must be http(s)://host[:port][/base]", r.upstream),
        ));
    }
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
        <tokio_postgres::Config as std::str::FromStr>::from_str(s)
            .map_err(|e| invalid("store.url", format!("not a valid PostgreSQL URL ({e})")))?;
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
    fn postgres_urls_are_redacted_in_debug() {
        let u = StoreUrl::Postgres("postgres://u:hunter2@db/x".into());
        assert!(!format!("{u:?}").contains("hunter2"));
    }
}

#[cfg(test)]
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
