//! `GET /v1/access-types`: the configured access types (SPEC §4), what the console builds its
//! check boxes, badges and labels from.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::dto::{AccessTypeDto, AccessTypeList};
use super::{json_response, Admin};

impl Admin {
    pub(super) fn access_types(&self) -> Response<Full<Bytes>> {
        let list = AccessTypeList {
            access_types: self
                .index
                .access_types()
                .iter()
                .map(|t| AccessTypeDto {
                    name: &t.name,
                    label: &t.label,
                })
                .collect(),
        };
        json_response(StatusCode::OK, &list)
    }
}
