//! Routing: method + path → [`Op`], the one table of what the admin listener serves. The
//! router ([`resolve`]), the handlers ([`Admin::route`], an exhaustive match on `Op`) and the
//! OpenAPI document (`openapi`, built by walking [`Op::ALL`]) all read it, so a path cannot be
//! served without being documented, nor documented without being served.
//!
//! [`Admin::route_open`] answers the operations that need no key, before the key check;
//! [`Admin::route`] the rest, after it. A known path with another method is 405 with `Allow`,
//! an unknown path 404.

use bytes::Bytes;
use http::Method;

use super::audit::Actor;
use super::{console, Admin, AdminError, AdminResult};

/// Every operation of the admin API, in the order the OpenAPI document lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    ListTokens,
    CreateToken,
    ActivateTokens,
    DeactivateTokens,
    ShowToken,
    UpdateToken,
    DeleteToken,
    RegenerateToken,
    ListIps,
    BlockIps,
    UnblockIps,
    TokenUsage,
    AccessTypes,
    Audit,
    Deliveries,
    OpenApi,
    Metrics,
    Healthz,
    Readyz,
}

impl Op {
    pub(crate) const ALL: [Op; 19] = [
        Op::ListTokens,
        Op::CreateToken,
        Op::ActivateTokens,
        Op::DeactivateTokens,
        Op::ShowToken,
        Op::UpdateToken,
        Op::DeleteToken,
        Op::RegenerateToken,
        Op::ListIps,
        Op::BlockIps,
        Op::UnblockIps,
        Op::TokenUsage,
        Op::AccessTypes,
        Op::Audit,
        Op::Deliveries,
        Op::OpenApi,
        Op::Metrics,
        Op::Healthz,
        Op::Readyz,
    ];

    /// The method and the path template (OpenAPI's `{name}` for the one variable segment).
    pub(crate) fn endpoint(self) -> (Method, &'static str) {
        match self {
            Op::ListTokens => (Method::GET, "/v1/tokens"),
            Op::CreateToken => (Method::POST, "/v1/tokens"),
            Op::ActivateTokens => (Method::POST, "/v1/tokens/activate"),
            Op::DeactivateTokens => (Method::POST, "/v1/tokens/deactivate"),
            Op::ShowToken => (Method::GET, TOKEN),
            Op::UpdateToken => (Method::PATCH, TOKEN),
            Op::DeleteToken => (Method::DELETE, TOKEN),
            Op::RegenerateToken => (Method::POST, "/v1/tokens/{name}/regenerate"),
            Op::ListIps => (Method::GET, "/v1/tokens/{name}/ips"),
            Op::BlockIps => (Method::POST, "/v1/tokens/{name}/ips/block"),
            Op::UnblockIps => (Method::POST, "/v1/tokens/{name}/ips/unblock"),
            Op::TokenUsage => (Method::GET, "/v1/tokens/{name}/usage"),
            Op::AccessTypes => (Method::GET, "/v1/access-types"),
            Op::Audit => (Method::GET, "/v1/audit"),
            Op::Deliveries => (Method::GET, "/v1/webhooks/deliveries"),
            Op::OpenApi => (Method::GET, "/v1/openapi.json"),
            Op::Metrics => (Method::GET, "/metrics"),
            Op::Healthz => (Method::GET, "/healthz"),
            Op::Readyz => (Method::GET, "/readyz"),
        }
    }

    /// The OpenAPI `operationId`.
    pub(crate) fn operation_id(self) -> &'static str {
        match self {
            Op::ListTokens => "list_tokens",
            Op::CreateToken => "create_token",
            Op::ActivateTokens => "activate_tokens",
            Op::DeactivateTokens => "deactivate_tokens",
            Op::ShowToken => "show_token",
            Op::UpdateToken => "update_token",
            Op::DeleteToken => "delete_token",
            Op::RegenerateToken => "regenerate_token",
            Op::ListIps => "list_ips",
            Op::BlockIps => "block_ips",
            Op::UnblockIps => "unblock_ips",
            Op::TokenUsage => "token_usage",
            Op::AccessTypes => "list_access_types",
            Op::Audit => "list_audit",
            Op::Deliveries => "list_webhook_deliveries",
            Op::OpenApi => "openapi",
            Op::Metrics => "metrics",
            Op::Healthz => "healthz",
            Op::Readyz => "readyz",
        }
    }

    /// Served without the admin key: the probes and the OpenAPI document always, `/metrics`
    /// with `admin.metrics_public`.
    pub(crate) fn is_open(self, metrics_public: bool) -> bool {
        match self {
            Op::Healthz | Op::Readyz | Op::OpenApi => true,
            Op::Metrics => metrics_public,
            _ => false,
        }
    }
}

const TOKEN: &str = "/v1/tokens/{name}";

/// Why a request names no operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No such path: 404.
    NoSuchPath,
    /// The path exists with these methods only: 405 with `Allow`.
    Method(String),
}

impl From<Miss> for AdminError {
    fn from(m: Miss) -> AdminError {
        match m {
            Miss::NoSuchPath => AdminError::NoSuchPath,
            Miss::Method(allow) => AdminError::MethodNotAllowed(allow),
        }
    }
}

/// The path template `path` matches, and its `{name}` segment if it has one. The literal
/// `activate` and `deactivate` win over `{name}` (as OpenAPI matches), which is why no token
/// may take those names (`token::validate_new_name`).
fn template(path: &str) -> Option<(&'static str, Option<&str>)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        ["v1", "tokens"] => ("/v1/tokens", None),
        ["v1", "tokens", "activate"] => ("/v1/tokens/activate", None),
        ["v1", "tokens", "deactivate"] => ("/v1/tokens/deactivate", None),
        ["v1", "tokens", name] => (TOKEN, Some(*name)),
        ["v1", "tokens", name, "regenerate"] => ("/v1/tokens/{name}/regenerate", Some(*name)),
        ["v1", "tokens", name, "ips"] => ("/v1/tokens/{name}/ips", Some(*name)),
        ["v1", "tokens", name, "ips", "block"] => ("/v1/tokens/{name}/ips/block", Some(*name)),
        ["v1", "tokens", name, "ips", "unblock"] => ("/v1/tokens/{name}/ips/unblock", Some(*name)),
        ["v1", "tokens", name, "usage"] => ("/v1/tokens/{name}/usage", Some(*name)),
        ["v1", "access-types"] => ("/v1/access-types", None),
        ["v1", "audit"] => ("/v1/audit", None),
        ["v1", "webhooks", "deliveries"] => ("/v1/webhooks/deliveries", None),
        ["v1", "openapi.json"] => ("/v1/openapi.json", None),
        ["metrics"] => ("/metrics", None),
        ["healthz"] => ("/healthz", None),
        ["readyz"] => ("/readyz", None),
        _ => return None,
    })
}

/// The operation `method` and `path` name, with the path's `{name}` segment.
pub(crate) fn resolve<'p>(method: &Method, path: &'p str) -> Result<(Op, Option<&'p str>), Miss> {
    let (tpl, name) = template(path).ok_or(Miss::NoSuchPath)?;
    let mut allow: Vec<Method> = Vec::new();
    for op in Op::ALL {
        let (m, t) = op.endpoint();
        if t == tpl {
            if m == *method {
                return Ok((op, name));
            }
            allow.push(m);
        }
    }
    let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
    Err(Miss::Method(allow.join(", ")))
}

/// An authenticated request, ready for its handler.
pub(super) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub actor: Actor,
    pub body: Bytes,
}

impl Admin {
    /// The operations that need no key and the console's page and assets, which hold no data
    /// (SPEC §7); `None` for a request that needs the key.
    pub(super) async fn route_open(&self, method: &Method, path: &str) -> Option<AdminResult> {
        match resolve(method, path) {
            Ok((op, _)) if op.is_open(self.metrics_public) => Some(match op {
                Op::Healthz => Ok(self.healthz()),
                Op::Readyz => self.readyz().await,
                Op::OpenApi => Ok(self.openapi()),
                _ => Ok(self.metrics()),
            }),
            _ if method == Method::GET || method == Method::HEAD => console::serve(path).map(Ok),
            _ => None,
        }
    }

    pub(super) async fn route(&self, call: Call) -> AdminResult {
        let (actor, body) = (&call.actor, call.body);
        let query = call.query.as_deref();
        let (op, name) = resolve(&call.method, &call.path)?;
        let name = name.unwrap_or("");
        match op {
            Op::ListTokens => self.list(query).await,
            Op::CreateToken => self.create(actor, body).await,
            Op::ActivateTokens => self.set_status(actor, body, true).await,
            Op::DeactivateTokens => self.set_status(actor, body, false).await,
            Op::ShowToken => self.show(name).await,
            Op::UpdateToken => self.update(actor, name, body).await,
            Op::DeleteToken => self.delete(actor, name).await,
            Op::RegenerateToken => self.regenerate(actor, name, body).await,
            Op::ListIps => self.ips(name).await,
            Op::BlockIps => self.block(actor, name, body, true).await,
            Op::UnblockIps => self.block(actor, name, body, false).await,
            Op::TokenUsage => self.usage(name, query).await,
            Op::AccessTypes => Ok(self.access_types()),
            Op::Audit => self.audit(query).await,
            Op::Deliveries => self.deliveries(query).await,
            Op::OpenApi => Ok(self.openapi()),
            Op::Metrics => Ok(self.metrics()),
            Op::Healthz => Ok(self.healthz()),
            Op::Readyz => self.readyz().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation's own template, with a sample name, resolves to it.
    #[test]
    fn every_operation_resolves_from_its_template() {
        for op in Op::ALL {
            let (method, tpl) = op.endpoint();
            let path = tpl.replace("{name}", "feed-a");
            assert_eq!(
                resolve(&method, &path),
                Ok((op, tpl.contains('{').then_some("feed-a")))
            );
        }
        let ops: std::collections::HashSet<_> = Op::ALL.iter().map(|op| op.endpoint()).collect();
        assert_eq!(
            ops.len(),
            Op::ALL.len(),
            "two operations share a method and path"
        );
    }

    #[test]
    fn other_methods_are_405_with_allow_and_unknown_paths_404() {
        assert_eq!(
            resolve(&Method::PUT, "/v1/tokens"),
            Err(Miss::Method("GET, POST".into()))
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/tokens/activate"),
            Err(Miss::Method("POST".into()))
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/tokens/feed-a"),
            Err(Miss::Method("GET, PATCH, DELETE".into()))
        );
        assert_eq!(
            resolve(&Method::POST, "/healthz"),
            Err(Miss::Method("GET".into()))
        );
        for path in [
            "/",
            "/v1",
            "/v1/tokens/a/b",
            "/v1/tokens/a/ips/x",
            "/v2/tokens",
        ] {
            assert_eq!(resolve(&Method::GET, path), Err(Miss::NoSuchPath), "{path}");
        }
    }
}
