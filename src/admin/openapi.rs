//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the admin API (SPEC §11), built from
//! the code that serves it.
//!
//! - The paths are [`Op::ALL`], the router's own table (`routes`), so a served operation is
//!   a documented one and the other way round.
//! - The schemas are derived (`utoipa::ToSchema`) from the types the handlers read and write:
//!   the wire types of `dto`, the request bodies of `body` (each field's schema sits next to
//!   the check that enforces it, from the same constants), the list queries of `query`.
//! - The error codes are [`AdminError::CODES`], the statuses of each operation are listed
//!   here, next to the handler they describe, and checked against the running server by
//!   schemathesis in `.ci/run` (`tests/openapi.rs` holds the rest).
//! - The access types are the configured ones, read when the document is asked for.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

use super::body::{IpsBody, NamesBody, NewToken, RegenerateBody, TokenPatch};
use super::dto::{
    AccessTypeList, AuditList, CreatedToken, DeliveryList, IpList, TokenDto, TokenList, Tokens,
};
use super::error::AdminError;
use super::query::{QueryParams, AUDIT_LIST, DELIVERY_LIST, TOKEN_LIST};
use super::routes::Op;
use super::{json_response, Admin};

/// A schema written as JSON (for the field types whose checks are hand-written).
pub(crate) fn schema(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).expect("a static OpenAPI schema")
}

/// An RFC 3339 UTC time as the API reads it (`Z` or `+00:00`; humantime's parser).
pub(crate) fn timestamp_schema(description: &str) -> Value {
    json!({
        "type": "string",
        "format": "date-time",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$",
        "description": description,
    })
}

/// humantime's grammar: numbers, each with one of its units, optionally spaced.
const DURATION_PATTERN: &str = "^\\s*([0-9]+(\\.[0-9]+)?\\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\\s*)+$";

/// A humantime duration such as `"90d"` or `"1h 30m"`.
pub(crate) fn duration_schema(description: &str) -> Value {
    json!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": description,
    })
}

/// An IP address or CIDR as block entries and allow-lists take it.
pub(crate) fn ip_or_cidr_schema() -> Value {
    json!({
        "anyOf": [
            {"type": "string", "format": "ipv4"},
            {"type": "string", "format": "ipv6"},
            {"type": "string", "pattern": "^[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}$"},
            {"type": "string", "pattern": "^[0-9A-Fa-f:.]+/[0-9]{1,3}$"},
        ],
        "description": "An IPv4 or IPv6 address, or a CIDR without host bits (10.0.0.0/8).",
        "examples": ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"],
    })
}

/// A token name (SPEC §1).
pub(crate) fn name_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": crate::token::NAME_MAX,
        "pattern": "^[A-Za-z0-9-]+$",
        "description": "1 to 32 letters, digits and '-'; unique ignoring case.",
        "examples": ["feed-a"],
    })
}

impl utoipa::PartialSchema for crate::ratelimit::RateLimit {
    fn schema() -> RefOr<Schema> {
        schema(json!({
            "type": "object",
            "properties": {
                "requests": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": crate::ratelimit::MAX_REQUESTS,
                },
                "per": duration_schema("The window, 1s to 1d in whole milliseconds (\"1m\")."),
            },
            "required": ["requests", "per"],
            "additionalProperties": false,
            "description": "At most `requests` uses per `per` window, in bursts of at most `requests`.",
        }))
    }
}

impl ToSchema for crate::ratelimit::RateLimit {}

/// What one operation documents beyond its path and method.
struct OpDoc {
    summary: &'static str,
    tag: &'static str,
    /// The query parameters it takes, if any.
    query: Option<&'static dyn QueryParams>,
    /// The request body's schema, and whether the body is required.
    body: Option<(&'static str, bool)>,
    /// The success status and its JSON schema (`None`: no body, or not JSON).
    ok: (u16, Option<&'static str>),
    /// The error statuses it can answer besides the ones every keyed operation can.
    errors: &'static [u16],
}

/// Statuses every operation behind the admin key can answer: a bad or missing key, too many
/// failures from the address, a store that cannot serve.
const KEYED_ERRORS: &[u16] = &[401, 429, 503];
/// Statuses every operation with a body can answer.
const BODY_ERRORS: &[u16] = &[400, 413, 415];

fn doc_of(op: Op) -> OpDoc {
    let d = |summary, tag, ok, errors| OpDoc {
        summary,
        tag,
        query: None,
        body: None,
        ok,
        errors,
    };
    match op {
        Op::ListTokens => OpDoc {
            query: Some(&TOKEN_LIST),
            ..d(
                "List tokens, sorted by name, a page at a time",
                "tokens",
                (200, Some("TokenList")),
                &[400],
            )
        },
        Op::CreateToken => OpDoc {
            body: Some(("NewToken", true)),
            ..d(
                "Create a token; the answer holds its secret, shown only here",
                "tokens",
                (201, Some("CreatedToken")),
                &[409],
            )
        },
        Op::ActivateTokens => OpDoc {
            body: Some(("NamesBody", true)),
            ..d(
                "Activate tokens (all or none)",
                "tokens",
                (200, Some("Tokens")),
                &[404, 409],
            )
        },
        Op::DeactivateTokens => OpDoc {
            body: Some(("NamesBody", true)),
            ..d(
                "Deactivate tokens (all or none)",
                "tokens",
                (200, Some("Tokens")),
                &[404, 409],
            )
        },
        Op::ShowToken => d("One token", "tokens", (200, Some("TokenDto")), &[404]),
        Op::UpdateToken => OpDoc {
            body: Some(("TokenPatch", true)),
            ..d(
                "Change a token's description, access, expiry, rate limit or allow-list",
                "tokens",
                (200, Some("TokenDto")),
                &[404, 409],
            )
        },
        Op::DeleteToken => d(
            "Delete a token for good",
            "tokens",
            (204, None),
            &[404, 409],
        ),
        Op::RegenerateToken => OpDoc {
            body: Some(("RegenerateBody", false)),
            ..d(
                "Replace a token's secret, the old one working on for an optional grace",
                "tokens",
                (200, Some("CreatedToken")),
                &[404, 409],
            )
        },
        Op::ListIps => d(
            "The client IPs that used a token, and its blocks",
            "ips",
            (200, Some("IpList")),
            &[404],
        ),
        Op::BlockIps => OpDoc {
            body: Some(("IpsBody", true)),
            ..d(
                "Block IPs or CIDRs for a token",
                "ips",
                (200, Some("IpList")),
                &[404, 409],
            )
        },
        Op::UnblockIps => OpDoc {
            body: Some(("IpsBody", true)),
            ..d(
                "Unblock IPs or CIDRs for a token",
                "ips",
                (200, Some("IpList")),
                &[404, 409],
            )
        },
        Op::TokenUsage => OpDoc {
            query: Some(&super::usage::USAGE_PARAMS),
            ..d(
                "A token's admitted requests and refusals by reason, per hour or day (at most 2000 buckets)",
                "usage",
                (200, Some("Usage")),
                &[400, 404],
            )
        },
        Op::AccessTypes => d(
            "The configured access types, in config order",
            "config",
            (200, Some("AccessTypeList")),
            &[],
        ),
        Op::Audit => OpDoc {
            query: Some(&AUDIT_LIST),
            ..d(
                "The audit log, newest first",
                "audit",
                (200, Some("AuditList")),
                &[400],
            )
        },
        Op::Deliveries => OpDoc {
            query: Some(&DELIVERY_LIST),
            ..d(
                "Webhook deliveries, newest first",
                "webhooks",
                (200, Some("DeliveryList")),
                &[400],
            )
        },
        Op::OpenApi => d("This document", "meta", (200, None), &[]),
        Op::Metrics => d(
            "Prometheus metrics (text exposition format)",
            "meta",
            (200, None),
            &[],
        ),
        Op::Healthz => d("Liveness", "meta", (200, Some("Health")), &[]),
        Op::Readyz => d(
            "Readiness: 503 while the store cannot serve",
            "meta",
            (200, Some("Health")),
            &[503],
        ),
    }
}

/// The error responses' schema: `error` is one of [`AdminError::CODES`].
fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "error": {"type": "string", "enum": AdminError::CODES},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "invalid_request: the refused field or query parameter"},
            "names": {"type": "array", "items": {"type": "string"}, "description": "not_found, token_expired, token_revoked: the names at fault"},
            "blocked_by": {"type": "string", "description": "blocked_by_cidr: the CIDR entry to unblock instead"},
        },
        "required": ["error", "message"],
        "additionalProperties": false,
    })
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(op: Op, metrics_public: bool) -> Value {
    let doc = doc_of(op);
    let keyed = !op.is_open(metrics_public);
    let mut o = Map::new();
    o.insert("operationId".into(), json!(op.operation_id()));
    o.insert("summary".into(), json!(doc.summary));
    o.insert("tags".into(), json!([doc.tag]));
    let mut params = Vec::new();
    if op.endpoint().1.contains("{name}") {
        params.push(json!({
            "name": "name", "in": "path", "required": true,
            "description": "The token's name (ignoring case).",
            "schema": name_schema(),
        }));
    }
    if let Some(list) = doc.query {
        params.extend(list.openapi_parameters());
    }
    if !params.is_empty() {
        o.insert("parameters".into(), Value::Array(params));
    }
    if let Some((body, required)) = doc.body {
        o.insert(
            "requestBody".into(),
            json!({
                "required": required,
                "content": {"application/json": {"schema": schema_ref(body)}},
            }),
        );
    }
    let mut responses = Map::new();
    let (ok, ok_schema) = doc.ok;
    let ok_content = match (op, ok_schema) {
        (_, Some(s)) => json!({"application/json": {"schema": schema_ref(s)}}),
        (Op::Metrics, None) => json!({"text/plain": {"schema": {"type": "string"}}}),
        (Op::OpenApi, None) => json!({"application/json": {"schema": {"type": "object"}}}),
        _ => Value::Null,
    };
    let mut ok_response = json!({"description": reason(ok)});
    if !ok_content.is_null() {
        ok_response["content"] = ok_content;
    }
    if op == Op::CreateToken {
        // The new token's name feeds every operation on `/v1/tokens/{name}` (OpenAPI links:
        // what API clients and stateful testers follow).
        let links: Map<String, Value> = Op::ALL
            .iter()
            .filter(|o| o.endpoint().1.contains("{name}"))
            .map(|o| {
                (
                    o.operation_id().to_string(),
                    json!({"operationId": o.operation_id(), "parameters": {"name": "$response.body#/name"}}),
                )
            })
            .collect();
        ok_response["links"] = Value::Object(links);
    }
    responses.insert(ok.to_string(), ok_response);
    let mut errors: Vec<u16> = doc.errors.to_vec();
    if keyed {
        errors.extend_from_slice(KEYED_ERRORS);
    }
    if doc.body.is_some() {
        errors.extend_from_slice(BODY_ERRORS);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        let mut r = json!({
            "description": reason(status),
            "content": {"application/json": {"schema": schema_ref("Error")}},
        });
        if status == 429 {
            r["headers"] = json!({"Retry-After": {
                "description": "Seconds until this address may try again.",
                "schema": {"type": "integer", "minimum": 0},
            }});
        }
        responses.insert(status.to_string(), r);
    }
    o.insert("responses".into(), Value::Object(responses));
    if keyed {
        o.insert("security".into(), json!([{"admin_key": []}]));
    } else {
        o.insert("security".into(), json!([]));
    }
    Value::Object(o)
}

/// Every property of the answers' schemas is present in every answer (`null` when it does
/// not apply, SPEC §1): the derived schemas say so.
fn require_all(schema: &mut Value) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let names: Vec<Value> = props.keys().cloned().map(Value::String).collect();
    schema["required"] = Value::Array(names);
}

fn components(access_types: Vec<&str>) -> Value {
    let mut schemas = Map::new();
    let mut add = |name: std::borrow::Cow<'static, str>, s: RefOr<Schema>, answer: bool| {
        let mut v = serde_json::to_value(s).expect("a schema serialises");
        if answer {
            require_all(&mut v);
        }
        schemas.insert(name.into_owned(), v);
    };
    macro_rules! answers {
        ($($t:ty),*) => { $( add(<$t>::name(), <$t as utoipa::PartialSchema>::schema(), true); )* };
    }
    macro_rules! bodies {
        ($($t:ty),*) => { $( add(<$t>::name(), <$t as utoipa::PartialSchema>::schema(), false); )* };
    }
    answers!(
        TokenDto,
        TokenList,
        Tokens,
        IpList,
        super::dto::IpDto,
        AuditList,
        super::dto::AuditDto,
        DeliveryList,
        super::dto::DeliveryDto,
        AccessTypeList,
        super::dto::AccessTypeDto,
        super::dto::Usage,
        super::dto::UsageBucket,
        super::dto::RefusedCounts,
        crate::model::Status,
        crate::model::InactiveReason,
        crate::events::DeliveryStatus,
        crate::ratelimit::RateLimit
    );
    bodies!(NewToken, TokenPatch, RegenerateBody, NamesBody, IpsBody);
    // The created token is the token plus its secret (`flatten`, an allOf).
    add(
        CreatedToken::name(),
        <CreatedToken as utoipa::PartialSchema>::schema(),
        false,
    );
    schemas.insert("Error".into(), error_schema());
    schemas.insert(
        "Health".into(),
        json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}}, "required": ["status"]}),
    );
    schemas.insert(
        "AccessType".into(),
        json!({"type": "string", "enum": access_types, "description": "One of the configured access types (GET /v1/access-types)."}),
    );
    json!({
        "schemas": schemas,
        "securitySchemes": {"admin_key": {
            "type": "http",
            "scheme": "bearer",
            "description": "The admin key (env TOKENGATE_ADMIN_KEY or admin.key_file), never an application token.",
        }},
    })
}

/// The whole document.
pub(crate) fn document(access_types: Vec<&str>, metrics_public: bool) -> Value {
    let mut paths = Map::new();
    for op in Op::ALL {
        let (method, path) = op.endpoint();
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        item[method.as_str().to_ascii_lowercase()] = operation(op, metrics_public);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tokengate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The admin listener's JSON API: application tokens, their client IPs and blocks, the audit log and webhook deliveries. Every operation but the probes and this document needs `Authorization: Bearer <admin key>`. Validation errors are 400 `invalid_request` naming the `field`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": components(access_types),
    })
}

impl Admin {
    /// `GET /v1/openapi.json`, with this instance's access types.
    pub(super) fn openapi(&self) -> Response<Full<Bytes>> {
        let access = self.index.access_types();
        let doc = document(
            access.iter().map(|t| t.name.as_str()).collect(),
            self.metrics_public,
        );
        json_response(StatusCode::OK, &doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        document(vec!["security-director", "third-party-feeds"], false)
    }

    /// The document's operations are exactly the router's.
    #[test]
    fn paths_are_the_routers_operations() {
        let d = doc();
        let mut documented = Vec::new();
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, o) in item.as_object().unwrap() {
                documented.push((
                    method.to_uppercase(),
                    path.clone(),
                    o["operationId"].as_str().unwrap().to_string(),
                ));
            }
        }
        documented.sort();
        let mut served: Vec<_> = Op::ALL
            .iter()
            .map(|op| {
                let (m, p) = op.endpoint();
                (m.to_string(), p.to_string(), op.operation_id().to_string())
            })
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    /// Every `$ref` points at a schema the document holds.
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let d = doc();
        let mut all = Vec::new();
        refs(&d, &mut all);
        assert!(all.len() > 20, "{all:?}");
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(
                d["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
    }

    #[test]
    fn answers_require_every_field_and_bodies_refuse_unknown_ones() {
        let d = doc();
        let s = &d["components"]["schemas"];
        let token = &s["TokenDto"];
        let required: Vec<&str> = token["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in [
            "id",
            "name",
            "description",
            "access",
            "status",
            "inactive_reason",
            "expires_at",
            "rate_limit",
            "allowed_ips",
            "delete_at",
        ] {
            assert!(
                required.contains(&field),
                "{field} not required: {required:?}"
            );
        }
        for body in [
            "NewToken",
            "TokenPatch",
            "RegenerateBody",
            "NamesBody",
            "IpsBody",
        ] {
            assert_eq!(
                s[body]["additionalProperties"],
                json!(false),
                "{body}: {}",
                s[body]
            );
        }
        assert_eq!(s["NewToken"]["required"], json!(["name", "access"]));
        assert_eq!(
            s["AccessType"]["enum"],
            json!(["security-director", "third-party-feeds"])
        );
        assert_eq!(d["openapi"], "3.1.0");
    }

    /// Keyed operations carry the bearer scheme and its 401; the probes and the document
    /// carry neither.
    #[test]
    fn security_follows_the_key_check() {
        let d = doc();
        for op in Op::ALL {
            let (m, p) = op.endpoint();
            let o = &d["paths"][p][m.as_str().to_ascii_lowercase()];
            let keyed = !op.is_open(false);
            assert_eq!(o["security"] == json!([{"admin_key": []}]), keyed, "{op:?}");
            assert_eq!(o["responses"].get("401").is_some(), keyed, "{op:?}");
        }
        let public = document(vec!["a"], true);
        assert_eq!(public["paths"]["/metrics"]["get"]["security"], json!([]));
    }
}
