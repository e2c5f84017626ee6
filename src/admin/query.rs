//! The query string of the two paged lists, `GET /v1/tokens` and `GET /v1/audit`: one parser
//! for `limit`, `after`, `q`, `status` and `token`; each list names the parameters it takes,
//! and any other parameter is refused.

use crate::model::Status;
use crate::token;

use super::error::{invalid, AdminError};

/// The parameters one list takes, and its page size.
pub(crate) struct ListParams {
    params: &'static [&'static str],
    default_limit: usize,
    max_limit: usize,
}

/// `GET /v1/tokens?status=&q=&limit=&after=`.
pub(crate) const TOKEN_LIST: ListParams = ListParams {
    params: &["status", "q", "limit", "after"],
    default_limit: 1000,
    max_limit: 10_000,
};

/// `GET /v1/audit?token=&limit=`.
pub(crate) const AUDIT_LIST: ListParams = ListParams {
    params: &["token", "limit"],
    default_limit: 100,
    max_limit: 1000,
};

/// `GET /v1/webhooks/deliveries?limit=`.
pub(crate) const DELIVERY_LIST: ListParams = ListParams {
    params: &["limit"],
    default_limit: 100,
    max_limit: 1000,
};

/// A parsed list query; a parameter the list does not take stays `None`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ListQuery {
    pub status: Option<Status>,
    /// Lower-cased name substring.
    pub q: Option<String>,
    pub limit: usize,
    /// Name key to continue after.
    pub after: Option<String>,
    /// Name key of one token.
    pub token: Option<String>,
}

/// An operation's query parameters, as the OpenAPI document describes them.
pub(crate) trait QueryParams: Sync {
    /// The parameters as OpenAPI parameter objects.
    fn openapi_parameters(&self) -> Vec<serde_json::Value>;
}

impl QueryParams for ListParams {
    /// This list's query parameters as OpenAPI parameter objects.
    fn openapi_parameters(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        let empty = "An empty value is the same as none.";
        self.params
            .iter()
            .map(|p| {
                let (schema, description) = match *p {
                    "status" => (
                        json!({"type": "string", "enum": ["active", "inactive", ""]}),
                        format!("Only tokens of this effective status. {empty}"),
                    ),
                    "q" => (
                        json!({"type": "string"}),
                        "Only names containing this (ignoring case).".to_string(),
                    ),
                    "limit" => (
                        json!({"anyOf": [
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": self.max_limit,
                                "default": self.default_limit,
                            },
                            {"type": "string", "enum": [""]},
                        ]}),
                        format!("The most entries in one answer. {empty}"),
                    ),
                    "after" => (
                        json!({"type": "string"}),
                        "The previous page's `next`: continue after this name.".to_string(),
                    ),
                    _ => (
                        json!({"type": "string"}),
                        "Only the entries of the token of this name (ignoring case).".to_string(),
                    ),
                };
                json!({"name": p, "in": "query", "required": false, "schema": schema, "description": description})
            })
            .collect()
    }
}

/// The refusal of a query parameter an operation does not take.
pub(crate) fn unknown_parameter(k: &str) -> AdminError {
    invalid(
        k,
        format!(
            "unknown query parameter {:?}",
            token::truncate_for_message(k)
        ),
    )
}

impl ListParams {
    pub(crate) fn parse(&self, query: Option<&str>) -> Result<ListQuery, AdminError> {
        let mut out = ListQuery {
            limit: self.default_limit,
            ..ListQuery::default()
        };
        let name = |v: &str| Some(token::name_key(v)).filter(|s| !s.is_empty());
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match self.params.contains(&&*k).then_some(&*k) {
                // An empty value means "not given" (SPEC shows `?status=&q=&limit=&after=`).
                Some("status" | "limit") if v.is_empty() => {}
                Some("status") => {
                    out.status = Some(match &*v {
                        "active" => Status::Active,
                        "inactive" => Status::Inactive,
                        _ => return Err(invalid("status", "status must be active or inactive")),
                    })
                }
                Some("q") => out.q = Some(v.to_ascii_lowercase()).filter(|s| !s.is_empty()),
                Some("limit") => {
                    let max = self.max_limit;
                    out.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| invalid("limit", format!("limit must be 1 to {max}")))?
                }
                Some("after") => out.after = name(&v),
                Some("token") => out.token = name(&v),
                _ => return Err(unknown_parameter(&k)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(params: &ListParams, query: &str) -> (String, String) {
        match params.parse(Some(query)) {
            Err(AdminError::Invalid {
                field: Some(f),
                message,
            }) => (f, message),
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_empty_values() {
        let q = TOKEN_LIST.parse(None).unwrap();
        assert_eq!(q.limit, 1000);
        let q = TOKEN_LIST.parse(Some("status=&q=&limit=&after=")).unwrap();
        assert_eq!(
            q,
            ListQuery {
                limit: 1000,
                ..ListQuery::default()
            }
        );
        assert_eq!(AUDIT_LIST.parse(Some("limit=&token=")).unwrap().limit, 100);
    }

    #[test]
    fn values_are_parsed() {
        let q = TOKEN_LIST
            .parse(Some("status=inactive&q=FeEd&limit=10000&after=Feed-A"))
            .unwrap();
        assert_eq!(q.status, Some(Status::Inactive));
        assert_eq!(q.q.as_deref(), Some("feed"));
        assert_eq!(q.limit, 10_000);
        assert_eq!(q.after.as_deref(), Some("feed-a"));
        let q = AUDIT_LIST.parse(Some("token=Feed-A&limit=1000")).unwrap();
        assert_eq!((q.token.as_deref(), q.limit), (Some("feed-a"), 1000));
    }

    #[test]
    fn refusals_name_the_parameter() {
        let limit = |max: usize| ("limit".to_string(), format!("limit must be 1 to {max}"));
        assert_eq!(refusal(&TOKEN_LIST, "limit=0"), limit(10_000));
        assert_eq!(refusal(&TOKEN_LIST, "limit=10001"), limit(10_000));
        assert_eq!(refusal(&AUDIT_LIST, "limit=1001"), limit(1000));
        assert_eq!(refusal(&AUDIT_LIST, "limit=x"), limit(1000));
        assert_eq!(
            refusal(&TOKEN_LIST, "status=deleted"),
            ("status".into(), "status must be active or inactive".into())
        );
        // Each list takes only its own parameters.
        for (params, key) in [
            (&TOKEN_LIST, "token"),
            (&AUDIT_LIST, "after"),
            (&AUDIT_LIST, "status"),
            (&AUDIT_LIST, "q"),
            (&TOKEN_LIST, "colour"),
        ] {
            assert_eq!(
                refusal(params, &format!("{key}=x")),
                (key.to_string(), format!("unknown query parameter {key:?}"))
            );
        }
    }
}
