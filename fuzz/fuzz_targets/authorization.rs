//! Authorization header parsing: any set of header values either yields a trimmed,
//! non-empty credential or a refusal, and the credential check never panics.
#![no_main]

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use tokengate::proxy::bearer;
use tokengate::token::parse_bearer;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(4) {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(AUTHORIZATION, v);
        }
    }
    if let Ok(token) = bearer(&headers) {
        assert!(!token.is_empty());
        assert!(!token.starts_with(b" ") && !token.ends_with(b" "));
        if let Ok(hash) = parse_bearer(token) {
            assert_eq!(token.len(), tokengate::token::SECRET_LEN);
            assert_eq!(hash, tokengate::token::SecretHash::of(token));
        }
    }
});
