//! The raw layer: serde structs that only mirror the file (`deny_unknown_fields`, strings
//! for durations and addresses); `validate` in `mod.rs` turns them into the typed layer.

use serde::Deserialize;

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
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub forward_auth: RawForwardAuth,
    #[serde(default)]
    pub webhooks: RawWebhooks,
    /// `None` when the file has no `[[access_types]]` (the seed's two apply).
    #[serde(default)]
    pub access_types: Option<Vec<RawAccessType>>,
    /// `None` when the file has no `[[routes]]`.
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAccessType {
    pub name: String,
    pub label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub listen: String,
    #[serde(deserialize_with = "string_list")]
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
    #[serde(deserialize_with = "lenient")]
    pub revocation: bool,
    #[serde(deserialize_with = "lenient")]
    pub revoke_limit: u32,
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
            revocation: true,
            revoke_limit: 10,
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
    /// How long the hourly usage counters are kept (SPEC §12).
    pub history: String,
}

impl Default for RawUsage {
    fn default() -> Self {
        RawUsage {
            flush_interval: "1s".into(),
            max_ips_per_token: 10000,
            history: "90d".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    pub inactive_after: String,
    pub delete_after: String,
    pub sweep_interval: String,
    /// Absent = tokens need not expire.
    pub max_expiry: Option<String>,
    pub max_rotation_grace: String,
}

impl Default for RawLifecycle {
    fn default() -> Self {
        RawLifecycle {
            inactive_after: "30d".into(),
            delete_after: "90d".into(),
            sweep_interval: "1m".into(),
            max_expiry: None,
            max_rotation_grace: "7d".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub backend: String,
    pub redis_url: String,
    pub on_backend_error: String,
    #[serde(deserialize_with = "lenient")]
    pub headers: bool,
    pub redis_timeout: String,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        RawRateLimit {
            backend: "local".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            on_backend_error: "allow".into(),
            headers: false,
            redis_timeout: "50ms".into(),
        }
    }
}

/// `[forward_auth]` (SPEC §9): the authorization-check listener, off without `listen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForwardAuth {
    pub listen: Option<String>,
    #[serde(deserialize_with = "string_list")]
    pub callers: Vec<String>,
    #[serde(deserialize_with = "string_list")]
    pub trusted_hops: Vec<String>,
    pub envoy_prefix: String,
    pub tls: Option<RawTls>,
}

impl Default for RawForwardAuth {
    fn default() -> Self {
        RawForwardAuth {
            listen: None,
            callers: vec!["127.0.0.0/8".into(), "::1/128".into()],
            trusted_hops: Vec::new(),
            envoy_prefix: "/envoy".into(),
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    pub retention: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    pub max_age: String,
    pub retention: String,
    pub expiry_notice: String,
    pub endpoints: Vec<RawWebhookEndpoint>,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        RawWebhooks {
            max_age: "24h".into(),
            retention: "30d".into(),
            expiry_notice: "7d".into(),
            endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookEndpoint {
    pub url: String,
    #[serde(default = "default_webhook_secret_file")]
    pub secret_file: String,
    #[serde(deserialize_with = "string_list")]
    pub events: Vec<String>,
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_webhook_secret_file() -> String {
    "data/webhook.secret".into()
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
    /// Absent on a route served only by the forward-auth listener.
    #[serde(default)]
    pub upstream: Option<String>,
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

/// A list of strings: a TOML array, or (from an env override) one comma-separated string
/// (`TOKENGATE_PROXY__TRUSTED_PROXIES=10.0.0.0/8,192.168.0.0/16`; empty = none).
fn string_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::List(v) => v,
        ListOrText::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// The routes of the built-in defaults (and of the shipped `config/tokengate.toml`).
pub fn default_routes() -> Vec<RawRoute> {
    let route = |prefix: &str, access: &str, upstream: &str| RawRoute {
        path_prefix: prefix.into(),
        host: None,
        access: access.into(),
        upstream: Some(upstream.into()),
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
