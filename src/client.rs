//! A small client of the admin API, used by the CLI's admin subcommands and by `dev`.
//! Admin commands never open the store: whatever the CLI can do, a script can do over HTTP.
//! An `https://` admin URL is verified against `--ca-file` (else the platform's roots), with
//! an optional client certificate (`--client-cert`, `--client-key`) for `admin.tls.client_ca`.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use crate::tls;

pub(crate) struct AdminClient {
    base: String,
    key: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// TLS options of the admin client (all PEM files).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientTls {
    /// CA bundle that verifies the admin listener (default: the platform's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for an admin listener with `admin.tls.client_ca`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A refusal by the API (status and its `error`/`message`), or a transport failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{code}: {message} (admin API at {url})")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        body: Value,
        /// The admin API's base URL (never a path, which may name a token).
        url: String,
    },
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl AdminClient {
    pub(crate) fn new(base: &str, key: &str) -> Result<AdminClient, ClientError> {
        AdminClient::with_tls(base, key, &ClientTls::default())
    }

    /// A client of `base` (`http://` or `https://host:port`) with TLS options.
    pub(crate) fn with_tls(
        base: &str,
        key: &str,
        opts: &ClientTls,
    ) -> Result<AdminClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let https = match base.parse::<Uri>() {
            Ok(u) if u.authority().is_some() && u.scheme_str() == Some("http") => false,
            Ok(u) if u.authority().is_some() && u.scheme_str() == Some("https") => true,
            _ => {
                return Err(ClientError::Usage(format!(
                    "invalid admin URL {base:?} (expected http://host:port or https://host:port)"
                )))
            }
        };
        let any_tls =
            opts.ca_file.is_some() || opts.client_cert.is_some() || opts.client_key.is_some();
        let config = match (https, any_tls) {
            (false, true) => {
                return Err(ClientError::Usage(format!(
                    "--ca-file/--client-cert/--client-key need an https:// admin URL, not {base:?}"
                )))
            }
            (false, false) => tls::client_config(rustls::RootCertStore::empty(), None),
            (true, _) => {
                let usage = |e: crate::config::ConfigError| ClientError::Usage(e.to_string());
                let roots = match &opts.ca_file {
                    Some(p) => tls::load_roots("--ca-file", p).map_err(usage)?,
                    None => tls::platform_roots(),
                };
                let client_auth = match (&opts.client_cert, &opts.client_key) {
                    (Some(c), Some(k)) => Some(
                        tls::load_cert_and_key("--client-cert", c, "--client-key", k)
                            .map_err(usage)?,
                    ),
                    (None, None) => None,
                    _ => {
                        return Err(ClientError::Usage(
                            "--client-cert and --client-key go together".into(),
                        ))
                    }
                };
                tls::client_config(roots, client_auth)
            }
        }
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                ClientError::Usage("--client-key is not the key of --client-cert".into())
            }
            other => ClientError::Usage(format!("--client-cert/--client-key: {other}")),
        })?;
        let http = tls::https_client(config, None, None);
        Ok(AdminClient {
            base,
            key: key.to_string(),
            http,
        })
    }

    /// Sends one request; a 2xx answers `Ok(body)` (`Value::Null` for an empty body).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method).uri(&url);
        if !self.key.is_empty() {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {}", self.key));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Usage(format!("invalid request: {e}")))?;
        let unreachable = |e: &dyn std::error::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: chain(e),
        };
        let resp = self.http.request(req).await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(value);
        }
        let code = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error")
            .to_string();
        let mut message = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(f) = value.get("field").and_then(Value::as_str) {
            message = format!("{message} (field {f})");
        }
        if let Some(names) = value.get("names").and_then(Value::as_array) {
            let list: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            message = format!("{message}: {}", list.join(", "));
        }
        if let (Some(name), true) = (token_of(path), code == "not_found") {
            if value.get("names").is_none() {
                message = format!("no token named {name:?}");
            }
        }
        if message.is_empty() {
            message = format!("HTTP {status}");
        }
        Err(ClientError::Api {
            status,
            code,
            message,
            body: value,
            url: self.base.clone(),
        })
    }
}

/// The token name in an admin path `/v1/tokens/{name}[/...]` (decoded as the CLI encodes it).
fn token_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/tokens/")?;
    let seg = rest.split(['/', '?']).next().filter(|s| !s.is_empty())?;
    if matches!(seg, "activate" | "deactivate") {
        return None;
    }
    let pair = format!("n={seg}");
    form_urlencoded::parse(pair.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// An error and its causes, `a: b: c` (hyper's own message alone says little, e.g. which
/// certificate check failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_of_an_admin_path_is_decoded_as_the_cli_encodes_it() {
        assert_eq!(token_of("/v1/tokens/feed-a").as_deref(), Some("feed-a"));
        assert_eq!(
            token_of("/v1/tokens/a+b%2Bc/ips/block").as_deref(),
            Some("a b+c")
        );
        assert_eq!(token_of("/v1/tokens/x?limit=1").as_deref(), Some("x"));
        for none in [
            "/v1/tokens",
            "/v1/tokens/",
            "/v1/tokens/activate",
            "/v1/audit?token=x",
        ] {
            assert_eq!(token_of(none), None, "{none}");
        }
    }
}
