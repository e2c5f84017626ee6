//! A small client of the admin API, used by the CLI's admin subcommands and by `dev`.
//! Admin commands never open the store: whatever the CLI can do, a script can do over HTTP.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct AdminClient {
    base: String,
    key: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A refusal by the API (status and its `error`/`message`), or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        body: Value,
    },
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

impl AdminClient {
    pub fn new(base: &str, key: &str) -> Result<AdminClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        match base.parse::<Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
            Ok(u) if u.scheme_str() == Some("https") => {
                return Err(ClientError::Usage(
                    "https:// admin URLs need TLS support, which is not built yet in this version"
                        .into(),
                ))
            }
            _ => {
                return Err(ClientError::Usage(format!(
                    "invalid admin URL {base:?} (expected http://host:port)"
                )))
            }
        }
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        Ok(AdminClient {
            base,
            key: key.to_string(),
            http,
        })
    }

    /// Sends one request; a 2xx answers `Ok(body)` (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key));
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
        let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable {
            url: self.base.clone(),
            reason: e.to_string(),
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
        if message.is_empty() {
            message = format!("HTTP {status}");
        }
        Err(ClientError::Api {
            status,
            code,
            message,
            body: value,
        })
    }
}
