//! Routing: method + path → handler. [`Admin::route_open`] answers the paths that need no
//! key, before the key check; [`Admin::route`] the rest, after it. A known path with another
//! method is 405, an unknown path 404.

use bytes::Bytes;
use http::Method;

use super::audit::Actor;
use super::{console, Admin, AdminError, AdminResult};

/// An authenticated request, ready for its handler.
pub(super) struct Call {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub actor: Actor,
    pub body: Bytes,
}

impl Admin {
    /// The probes, `/metrics` when `admin.metrics_public`, and the console's page and assets,
    /// which hold no data (SPEC §7); `None` for a path that needs the key.
    pub(super) async fn route_open(&self, method: &Method, path: &str) -> Option<AdminResult> {
        match (method, path) {
            (&Method::GET, "/healthz") => return Some(Ok(self.healthz())),
            (&Method::GET, "/readyz") => return Some(self.readyz().await),
            (&Method::GET, "/metrics") if self.metrics_public => return Some(Ok(self.metrics())),
            _ => {}
        }
        if method == Method::GET || method == Method::HEAD {
            return console::serve(path).map(Ok);
        }
        None
    }

    pub(super) async fn route(&self, call: Call) -> AdminResult {
        let (actor, body) = (&call.actor, call.body);
        let query = call.query.as_deref();
        let segments: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        match segments.as_slice() {
            ["v1", "tokens"] => match call.method {
                Method::GET => self.list(query).await,
                Method::POST => self.create(actor, body).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", op @ ("activate" | "deactivate")] if call.method == Method::POST => {
                self.set_status(actor, body, *op == "activate").await
            }
            ["v1", "tokens", name] => match call.method {
                Method::GET => self.show(name).await,
                Method::PATCH => self.update(actor, name, body).await,
                Method::DELETE => self.delete(actor, name).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "regenerate"] => match call.method {
                Method::POST => self.regenerate(actor, name, body).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "ips"] => match call.method {
                Method::GET => self.ips(name).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "tokens", name, "ips", op @ ("block" | "unblock")] => match call.method {
                Method::POST => self.block(actor, name, body, *op == "block").await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["metrics"] => match call.method {
                Method::GET => Ok(self.metrics()),
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "access-types"] => match call.method {
                Method::GET => Ok(self.access_types()),
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "audit"] => match call.method {
                Method::GET => self.audit(query).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            ["v1", "webhooks", "deliveries"] => match call.method {
                Method::GET => self.deliveries(query).await,
                _ => Err(AdminError::MethodNotAllowed),
            },
            _ => Err(AdminError::NoSuchPath),
        }
    }
}
