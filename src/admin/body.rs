//! Request bodies: reading one (JSON only, at most [`MAX_BODY`]), and one serde type per
//! endpoint that takes a body. Each type refuses unknown fields (`deny_unknown_fields`), and
//! each of its fields is a type that checks itself, so [`parse`] can name the refused field
//! by its JSON path (`field` in the 400).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{de, Deserialize, Deserializer};
use serde_json::{json, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::clock::Timestamp;
use crate::net::BlockEntry;
use crate::ratelimit::RateLimit;
use crate::token;

use super::error::{invalid, invalid_body, AdminError};

/// Largest accepted request body.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Most entries in one `names` or `ips` list.
pub(crate) const MAX_LIST: usize = 1000;

/// The whole body: empty, or `application/json` of at most [`MAX_BODY`] bytes.
pub(crate) async fn read(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                AdminError::PayloadTooLarge
            } else {
                invalid_body("the request body could not be read")
            }
        })?
        .to_bytes();
    if !bytes.is_empty() && json != Some(true) {
        return Err(AdminError::UnsupportedMediaType);
    }
    Ok(bytes)
}

/// A request body type.
pub(crate) trait Body: DeserializeOwned {
    /// Token fields that exist but cannot be set through this body: refused as such, not as
    /// unknown.
    const IMMUTABLE: &'static [&'static str] = &[];
}

/// Parses a body into `T`: a JSON object first, then `T` field by field. A refusal names the
/// field by its JSON path, with the message of the field's own check.
pub(crate) fn parse<T: Body>(body: &[u8]) -> Result<T, AdminError> {
    let object = json_object(body)?;
    // From a `Value`, a custom error's text is the message alone (no line and column).
    serde_path_to_error::deserialize(object).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde's wording for a field that `deny_unknown_fields` refuses.
        if !message.starts_with("unknown field `") {
            invalid(&field, message)
        } else if T::IMMUTABLE.contains(&field.as_str()) {
            invalid(&field, format!("{field} cannot be changed"))
        } else {
            let shown = token::truncate_for_message(&field);
            invalid(&field, format!("unknown field {shown:?}"))
        }
    })
}

fn json_object(body: &[u8]) -> Result<Value, AdminError> {
    if body.is_empty() {
        return Err(invalid_body("a JSON object body is required"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid_body("the body must be a JSON object")),
        Err(e) => Err(invalid_body(format!("invalid JSON: {e}"))),
    }
}

/// A field's value type: it checks the JSON value, and its refusal is the 400's message.
trait Field: Sized {
    fn check(v: Value) -> Result<Self, String>;
}

/// `deserialize_with` for every field, with `#[serde(default)]`: an absent field is `None`; a
/// present one, even `null`, is checked by `T`.
fn checked<'de, D: Deserializer<'de>, T: Field>(d: D) -> Result<Option<T>, D::Error> {
    T::check(Value::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Name, inline, required = true)]
    name: Option<Name>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Description, inline)]
    description: Option<Description>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = AccessList, inline, required = true)]
    access: Option<AccessList>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = ExpiresAt, inline)]
    expires_at: Option<ExpiresAt>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = ExpiresIn, inline)]
    expires_in: Option<ExpiresIn>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = RateLimitField, inline)]
    rate_limit: Option<RateLimitField>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = AllowedIps, inline)]
    allowed_ips: Option<AllowedIps>,
}

impl Body for NewToken {}

/// What a new token is made of (name and access are required).
pub(crate) struct NewTokenParts {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// As asked for: checked against the configured access types by the handler.
    pub(crate) access: Vec<String>,
    pub(crate) expiry: Option<Expiry>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) allowed_ips: Option<Vec<BlockEntry>>,
}

impl NewToken {
    pub(crate) fn into_parts(self) -> Result<NewTokenParts, AdminError> {
        let name = self
            .name
            .ok_or_else(|| invalid("name", "name is required"))?;
        let access = self
            .access
            .ok_or_else(|| invalid("access", "access is required"))?;
        Ok(NewTokenParts {
            name: name.0,
            description: self.description.and_then(|d| d.0),
            access: access.0,
            expiry: expiry(self.expires_at, self.expires_in)?,
            rate_limit: self.rate_limit.and_then(|r| r.0),
            allowed_ips: self.allowed_ips.and_then(|a| a.0),
        })
    }
}

/// A requested expiry, before it is checked against the clock and `lifecycle.max_expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// `expires_at: null`: never.
    Never,
    /// `expires_at`: this instant.
    At(Timestamp),
    /// `expires_in`: this long from now.
    In(std::time::Duration),
}

/// `expires_at` or `expires_in`, not both.
fn expiry(at: Option<ExpiresAt>, r#in: Option<ExpiresIn>) -> Result<Option<Expiry>, AdminError> {
    match (at, r#in) {
        (Some(_), Some(_)) => Err(invalid(
            "expires_in",
            "give expires_at or expires_in, not both",
        )),
        (Some(ExpiresAt(None)), None) => Ok(Some(Expiry::Never)),
        (Some(ExpiresAt(Some(t))), None) => Ok(Some(Expiry::At(t))),
        (None, Some(ExpiresIn(d))) => Ok(Some(Expiry::In(d))),
        (None, None) => Ok(None),
    }
}

/// `PATCH /v1/tokens/{name}`: what may change; the rest of a token may not.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenPatch {
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Description, inline)]
    description: Option<Description>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = AccessList, inline)]
    access: Option<AccessList>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = ExpiresAt, inline)]
    expires_at: Option<ExpiresAt>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = ExpiresIn, inline)]
    expires_in: Option<ExpiresIn>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = RateLimitField, inline)]
    rate_limit: Option<RateLimitField>,
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = AllowedIps, inline)]
    allowed_ips: Option<AllowedIps>,
}

impl Body for TokenPatch {
    const IMMUTABLE: &'static [&'static str] = &["name", "id", "status"];
}

impl TokenPatch {
    /// `None` = absent; `Some(None)` = null (clear); `Some(Some(s))` = set.
    pub(crate) fn description(&self) -> Option<Option<String>> {
        self.description.as_ref().map(|d| d.0.clone())
    }

    /// The access types asked for, unchecked against the configured ones (the handler
    /// knows what the token already holds).
    pub(crate) fn access(&self) -> Option<Vec<String>> {
        self.access.as_ref().map(|a| a.0.clone())
    }

    /// `None` = absent; `Some(None)` = null (no limit); `Some(Some(l))` = set.
    pub(crate) fn rate_limit(&self) -> Option<Option<RateLimit>> {
        self.rate_limit.as_ref().map(|r| r.0)
    }

    /// `None` = absent; `Some(None)` = null (any client IP); `Some(Some(list))` = set.
    pub(crate) fn allowed_ips(&self) -> Option<Option<Vec<BlockEntry>>> {
        self.allowed_ips.as_ref().map(|a| a.0.clone())
    }

    /// `None` when the patch does not touch the expiry.
    pub(crate) fn expiry(&self) -> Result<Option<Expiry>, AdminError> {
        expiry(self.expires_at, self.expires_in)
    }
}

/// `POST /v1/tokens/{name}/regenerate`: no body, or `{"grace": "<duration>"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegenerateBody {
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Grace, inline)]
    grace: Option<Grace>,
}

impl Body for RegenerateBody {}

impl RegenerateBody {
    /// The grace asked for: `None` for no body or no `grace` (the old secret stops at once).
    pub(crate) fn grace_of(body: &[u8]) -> Result<Option<std::time::Duration>, AdminError> {
        if body.is_empty() {
            return Ok(None);
        }
        Ok(parse::<RegenerateBody>(body)?.grace.map(|g| g.0))
    }
}

/// A rotation grace: a duration such as `"1h"` (`"0s"` for none).
#[derive(Debug)]
struct Grace(std::time::Duration);

impl Field for Grace {
    fn check(v: Value) -> Result<Self, String> {
        const HOW: &str = "grace must be a duration such as \"1h\" or \"7d\"";
        match v {
            Value::String(s) if s.trim() == "0" => Ok(Grace(std::time::Duration::ZERO)),
            Value::String(s) => humantime::parse_duration(s.trim())
                .map(Grace)
                .map_err(|_| HOW.to_string()),
            _ => Err(HOW.into()),
        }
    }
}

impl PartialSchema for Grace {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"oneOf": [super::openapi::duration_schema("How long the replaced secret keeps working, up to lifecycle.max_rotation_grace."), {"type": "string", "pattern": "^\\s*0\\s*$", "description": "none"}]}),
        )
    }
}

impl ToSchema for Grace {}

/// `POST /v1/tokens/activate` and `/deactivate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamesBody {
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Names, inline, required = true)]
    names: Option<Names>,
}

impl Body for NamesBody {}

impl NamesBody {
    pub(crate) fn into_names(self) -> Result<Vec<String>, AdminError> {
        match self.names {
            Some(n) => Ok(n.0),
            None => Err(invalid("names", not_a_list("names"))),
        }
    }
}

/// `POST /v1/tokens/{name}/ips/block` and `/unblock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IpsBody {
    #[serde(default, deserialize_with = "checked")]
    #[schema(value_type = Ips, inline, required = true)]
    ips: Option<Ips>,
}

impl Body for IpsBody {}

impl IpsBody {
    pub(crate) fn into_entries(self) -> Result<Vec<BlockEntry>, AdminError> {
        match self.ips {
            Some(ips) => Ok(ips.0),
            None => Err(invalid("ips", not_a_list("ips"))),
        }
    }
}

/// A new token's name (SPEC §1).
#[derive(Debug)]
struct Name(String);

impl Field for Name {
    fn check(v: Value) -> Result<Self, String> {
        let Value::String(s) = v else {
            return Err("name must be a string".into());
        };
        token::validate_new_name(&s)?;
        Ok(Name(s))
    }
}

impl PartialSchema for Name {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(super::openapi::name_schema())
    }
}

impl ToSchema for Name {}

/// `expires_at`: an RFC 3339 UTC instant (`2027-01-31T00:00:00Z`), or `null` for never.
#[derive(Debug, Clone, Copy)]
struct ExpiresAt(Option<Timestamp>);

impl Field for ExpiresAt {
    fn check(v: Value) -> Result<Self, String> {
        const HOW: &str =
            "expires_at must be an RFC 3339 UTC time (e.g. 2027-01-31T00:00:00Z) or null";
        match v {
            Value::Null => Ok(ExpiresAt(None)),
            Value::String(s) => Timestamp::parse_rfc3339(&s)
                .map(|t| ExpiresAt(Some(t)))
                .ok_or_else(|| HOW.to_string()),
            _ => Err(HOW.into()),
        }
    }
}

impl PartialSchema for ExpiresAt {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"oneOf": [super::openapi::timestamp_schema("RFC 3339 UTC; must lie in the future (and within lifecycle.max_expiry)."), {"type": "null", "description": "never"}]}),
        )
    }
}

impl ToSchema for ExpiresAt {}

/// `expires_in`: a duration such as `"90d"` or `"12h"`.
#[derive(Debug, Clone, Copy)]
struct ExpiresIn(std::time::Duration);

impl Field for ExpiresIn {
    fn check(v: Value) -> Result<Self, String> {
        const HOW: &str = "expires_in must be a duration such as \"90d\" or \"12h\"";
        match v {
            Value::String(s) => humantime::parse_duration(s.trim())
                .ok()
                .filter(|d| !d.is_zero())
                .map(ExpiresIn)
                .ok_or_else(|| HOW.to_string()),
            _ => Err(HOW.into()),
        }
    }
}

impl PartialSchema for ExpiresIn {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(super::openapi::duration_schema(
            "From now, such as \"90d\" (instead of expires_at); not zero.",
        ))
    }
}

impl ToSchema for ExpiresIn {}

/// A description, or `null` for none.
#[derive(Debug)]
struct Description(Option<String>);

impl Field for Description {
    fn check(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(Description(None)),
            Value::String(s) => {
                token::validate_description(&s)?;
                Ok(Description(Some(s)))
            }
            _ => Err("description must be a string or null".into()),
        }
    }
}

impl PartialSchema for Description {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"type": ["string", "null"], "maxLength": token::DESCRIPTION_MAX, "description": "At most 1024 characters; null for none."}),
        )
    }
}

impl ToSchema for Description {}

/// A non-empty list of access type names (which ones are configured is the handler's check).
#[derive(Debug)]
struct AccessList(Vec<String>);

impl Field for AccessList {
    fn check(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return Err("access must be an array of access types".into());
        };
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => names.push(s),
                _ => return Err("access must be an array of strings".into()),
            }
        }
        if names.is_empty() {
            return Err("at least one access type is required".into());
        }
        Ok(AccessList(names))
    }
}

impl PartialSchema for AccessList {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/AccessType"}, "description": "Duplicates are folded."}),
        )
    }
}

impl ToSchema for AccessList {}

/// Token names, 1 to [`MAX_LIST`] of them (checked when they are looked up).
#[derive(Debug)]
struct Names(Vec<String>);

impl Field for Names {
    fn check(v: Value) -> Result<Self, String> {
        string_list(v, "names").map(Names)
    }
}

impl PartialSchema for Names {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": {"type": "string"}, "examples": [["feed-a"]]}),
        )
    }
}

impl ToSchema for Names {}

/// IPs and CIDRs, 1 to [`MAX_LIST`] of them.
#[derive(Debug)]
struct Ips(Vec<BlockEntry>);

impl Field for Ips {
    fn check(v: Value) -> Result<Self, String> {
        string_list(v, "ips")?
            .iter()
            .map(|s| BlockEntry::parse(s))
            .collect::<Result<_, _>>()
            .map(Ips)
    }
}

impl PartialSchema for Ips {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": super::openapi::ip_or_cidr_schema()}),
        )
    }
}

impl ToSchema for Ips {}

/// `rate_limit`: `{"requests": N, "per": "<duration>"}`, or `null` for none.
#[derive(Debug)]
struct RateLimitField(Option<RateLimit>);

impl Field for RateLimitField {
    fn check(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(RateLimitField(None)),
            Value::Object(_) => serde_json::from_value::<RateLimit>(v)
                .map(|l| RateLimitField(Some(l)))
                .map_err(|e| {
                    // Reworded: `parse` reads serde's "unknown field `" as the body's own.
                    let m = e.to_string();
                    match m.strip_prefix("unknown field `") {
                        Some(rest) => format!(
                            "rate_limit has only \"requests\" and \"per\", not \"{}\"",
                            token::truncate_for_message(rest.split('`').next().unwrap_or(""))
                        ),
                        None => m,
                    }
                }),
            _ => {
                Err("rate_limit must be {\"requests\": N, \"per\": \"<duration>\"} or null".into())
            }
        }
    }
}

impl PartialSchema for RateLimitField {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"oneOf": [{"$ref": "#/components/schemas/RateLimit"}, {"type": "null", "description": "no limit"}]}),
        )
    }
}

impl ToSchema for RateLimitField {}

/// The most entries an allow-list holds (SPEC §1).
pub(crate) const MAX_ALLOWED_IPS: usize = 100;

/// `allowed_ips`: 1 to 100 IPs or CIDRs, canonicalised like block entries (duplicates folded),
/// or `null` for any client IP.
#[derive(Debug)]
struct AllowedIps(Option<Vec<BlockEntry>>);

impl Field for AllowedIps {
    fn check(v: Value) -> Result<Self, String> {
        let Value::Array(items) = v else {
            return match v {
                Value::Null => Ok(AllowedIps(None)),
                _ => Err(not_a_list("allowed_ips")),
            };
        };
        if items.is_empty() || items.len() > MAX_ALLOWED_IPS {
            return Err(format!(
                "allowed_ips must hold 1 to {MAX_ALLOWED_IPS} entries (null allows any client IP)"
            ));
        }
        let mut list: Vec<BlockEntry> = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(s) = item else {
                return Err(not_a_list("allowed_ips"));
            };
            let e = BlockEntry::parse(&s)?;
            if !list.contains(&e) {
                list.push(e);
            }
        }
        Ok(AllowedIps(Some(list)))
    }
}

impl PartialSchema for AllowedIps {
    fn schema() -> RefOr<Schema> {
        super::openapi::schema(
            json!({"oneOf": [{"type": "array", "minItems": 1, "maxItems": MAX_ALLOWED_IPS, "items": super::openapi::ip_or_cidr_schema()}, {"type": "null", "description": "any client IP"}]}),
        )
    }
}

impl ToSchema for AllowedIps {}

fn not_a_list(field: &str) -> String {
    format!("{field} must be an array of strings")
}

fn string_list(v: Value, field: &str) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(not_a_list(field));
    };
    if items.is_empty() || items.len() > MAX_LIST {
        return Err(format!("{field} must hold 1 to {MAX_LIST} entries"));
    }
    items
        .into_iter()
        .map(|i| match i {
            Value::String(s) => Ok(s),
            _ => Err(not_a_list(field)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `field` and `message` of a refused body.
    fn refused<T: Body + std::fmt::Debug>(body: Value) -> (Option<String>, String) {
        match parse::<T>(body.to_string().as_bytes()) {
            Err(AdminError::Invalid { field, message }) => (field, message),
            other => panic!("{body} was not refused as invalid: {other:?}"),
        }
    }

    fn field(f: &str, m: &str) -> (Option<String>, String) {
        (Some(f.into()), m.into())
    }

    #[test]
    fn the_body_must_be_one_json_object() {
        for (body, message) in [
            (&b""[..], "a JSON object body is required"),
            (b"[1]", "the body must be a JSON object"),
            (b"null", "the body must be a JSON object"),
        ] {
            match parse::<NamesBody>(body) {
                Err(AdminError::Invalid {
                    field: None,
                    message: m,
                }) => assert_eq!(m, message),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        match parse::<NamesBody>(b"{\"names\": [") {
            Err(AdminError::Invalid {
                field: None,
                message,
            }) => {
                assert!(message.starts_with("invalid JSON: "), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_and_immutable_fields_are_named() {
        assert_eq!(
            refused::<NewToken>(json!({"name": "a", "access": ["security-director"], "colour": 1})),
            field("colour", "unknown field \"colour\"")
        );
        let long = "k".repeat(70);
        let (f, m) = refused::<NamesBody>(json!({ long.clone(): 1 }));
        assert_eq!(f.as_deref(), Some(long.as_str()));
        assert_eq!(m, format!("unknown field \"{}…\"", "k".repeat(64)));
        for k in ["name", "id", "status"] {
            assert_eq!(
                refused::<TokenPatch>(json!({ k: null })),
                field(k, &format!("{k} cannot be changed"))
            );
        }
        // Only PATCH has immutable fields; elsewhere they are simply unknown.
        assert_eq!(
            refused::<NamesBody>(json!({"names": ["a"], "status": "x"})),
            field("status", "unknown field \"status\"")
        );
    }

    #[test]
    fn each_field_checks_itself() {
        let sd = "security-director";
        let cases: Vec<(Value, (Option<String>, String))> = vec![
            (
                json!({"name": 7, "access": [sd]}),
                field("name", "name must be a string"),
            ),
            (
                json!({"name": null, "access": [sd]}),
                field("name", "name must be a string"),
            ),
            (
                json!({"name": "a b", "access": [sd]}),
                field(
                    "name",
                    "name may contain only letters A-Z a-z, digits and '-'",
                ),
            ),
            (
                json!({"description": 5}),
                field("description", "description must be a string or null"),
            ),
            (
                json!({"access": sd}),
                field("access", "access must be an array of access types"),
            ),
            (
                json!({"access": null}),
                field("access", "access must be an array of access types"),
            ),
            (
                json!({"access": [1]}),
                field("access", "access must be an array of strings"),
            ),
            (
                json!({"access": []}),
                field("access", "at least one access type is required"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(refused::<NewToken>(body.clone()), want, "{body}");
        }
        let parts = |b: Value| parse::<NewToken>(b.to_string().as_bytes())?.into_parts();
        assert!(matches!(
            parts(json!({"access": [sd]})),
            Err(AdminError::Invalid { field: Some(f), message }) if f == "name" && message == "name is required"
        ));
        assert!(matches!(
            parts(json!({"name": "a"})),
            Err(AdminError::Invalid { field: Some(f), message }) if f == "access" && message == "access is required"
        ));
        let p = parts(json!({"name": "a", "description": null, "access": [sd, sd]})).unwrap();
        assert_eq!(
            (p.name.as_str(), p.description, p.access, p.expiry),
            ("a", None, vec![sd.to_string(), sd.to_string()], None)
        );
        let p = parts(json!({"name": "a", "access": [sd], "expires_in": "90d"})).unwrap();
        assert_eq!(
            p.expiry,
            Some(Expiry::In(std::time::Duration::from_secs(90 * 86400)))
        );
        let p = parts(json!({"name": "a", "access": [sd], "expires_at": null})).unwrap();
        assert_eq!(p.expiry, Some(Expiry::Never));
        for (body, field) in [
            (
                json!({"name": "a", "access": [sd], "expires_at": "tomorrow"}),
                "expires_at",
            ),
            (
                json!({"name": "a", "access": [sd], "expires_at": 5}),
                "expires_at",
            ),
            (
                json!({"name": "a", "access": [sd], "expires_in": "0s"}),
                "expires_in",
            ),
            (
                json!({"name": "a", "access": [sd], "expires_in": null}),
                "expires_in",
            ),
            (
                json!({"name": "a", "access": [sd], "expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"}),
                "expires_in",
            ),
        ] {
            assert!(
                matches!(parts(body.clone()), Err(AdminError::Invalid { field: Some(ref f), .. }) if f == field),
                "{body}"
            );
        }
    }

    #[test]
    fn patch_tells_absent_from_null() {
        let p = parse::<TokenPatch>(br#"{"description": null}"#).unwrap();
        assert_eq!(p.description(), Some(None));
        assert_eq!(p.access(), None);
        let p = parse::<TokenPatch>(br#"{"access": ["third-party-feeds"]}"#).unwrap();
        assert_eq!(p.description(), None);
        assert_eq!(p.access(), Some(vec!["third-party-feeds".to_string()]));
    }

    #[test]
    fn lists_hold_1_to_max_strings() {
        let shape = "names must be an array of strings";
        let size = format!("names must hold 1 to {MAX_LIST} entries");
        let too_many: Vec<String> = (0..=MAX_LIST).map(|i| format!("n{i}")).collect();
        for (body, message) in [
            (json!({}), shape),
            (json!({"names": null}), shape),
            (json!({"names": "a"}), shape),
            (json!({"names": ["a", 1]}), shape),
            (json!({"names": []}), size.as_str()),
            (json!({ "names": too_many }), size.as_str()),
        ] {
            let r = parse::<NamesBody>(body.to_string().as_bytes()).and_then(NamesBody::into_names);
            assert!(
                matches!(&r, Err(AdminError::Invalid { field: Some(f), message: m }) if f == "names" && m == message),
                "{body}: {r:?}"
            );
        }
        let r = parse::<IpsBody>(br#"{"ips": ["10.0.0.1", "10.0.0.1/8"]}"#);
        assert!(
            matches!(&r, Err(AdminError::Invalid { field: Some(f), .. }) if f == "ips"),
            "{r:?}"
        );
        let ips = parse::<IpsBody>(br#"{"ips": ["10.0.0.0/8", " ::ffff:10.1.2.3 "]}"#)
            .and_then(IpsBody::into_entries)
            .unwrap();
        assert_eq!(ips.len(), 2);
    }
}
