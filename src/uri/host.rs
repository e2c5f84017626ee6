//! The canonical form of a request authority (`Host`, HTTP/2 `:authority`), the one routing
//! and the config compare. Pure code.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// Longest host name DNS can carry (RFC 1035), in its text form without a trailing dot.
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Lowercases a request authority (`Host` header or HTTP/2 `:authority`), strips the port and
/// a trailing dot; keeps IPv6 literals in brackets (`[::1]:8080` → `[::1]`).
///
/// Returns `None` for an empty or syntactically invalid authority: userinfo (`@`), spaces or
/// other characters outside `A-Z a-z 0-9 - _ .`, an empty host or label, a port that is not
/// all digits or above 65535, an unbracketed or unparsable IPv6 address, a zone id.
///
/// An IPv6 literal comes back in its RFC 5952 form (`[0:0::1]` → `[::1]`), so every spelling
/// of an address meets the same routes. An empty port (`example.com:`) is allowed, as in
/// RFC 3986. Only one trailing dot is stripped: `example.com..` is invalid.
pub(crate) fn normalise_host(authority: &str) -> Option<Cow<'_, str>> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        if !after.is_empty() && !is_valid_port(after.strip_prefix(':')?) {
            return None;
        }
        // `Ipv6Addr` rejects zone ids (`%25eth0`) and anything else that is not an address.
        let addr: Ipv6Addr = inside.parse().ok()?;
        return Some(Cow::Owned(format!("[{addr}]")));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if port.is_some_and(|p| !is_valid_port(p)) {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    // Already canonical (the usual case): no copy.
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// RFC 3986 `port = *DIGIT`, bounded to what TCP can address. Checked by hand because
/// `u16::from_str` also accepts a leading `+`.
fn is_valid_port(port: &str) -> bool {
    port.bytes().all(|b| b.is_ascii_digit()) && (port.is_empty() || port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_normalisation() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM.:443", "example.com"),
            ("EXAMPLE.com.", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com:", "example.com"),
            ("example.com:0", "example.com"),
            ("example.com:65535", "example.com"),
            ("localhost", "localhost"),
            ("my_host-1.internal", "my_host-1.internal"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[::1]:80", "[::1]"),
            ("[::1]:8080", "[::1]"),
            ("[::1]:", "[::1]"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
            ("[2001:DB8::A]:443", "[2001:db8::a]"),
            ("[::ffff:192.0.2.1]", "[::ffff:192.0.2.1]"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                normalise_host(input).as_deref(),
                Some(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn invalid_hosts_are_none() {
        let long_label = "a".repeat(64);
        let long_host = ["a"; 127].join(".") + ".b";
        for input in [
            "",
            ".",
            ":80",
            ".:80",
            "user@example.com",
            "user:pass@example.com",
            "example.com@evil.com",
            "exa mple.com",
            " example.com",
            "example.com ",
            "example.com\t",
            "example.com\r\n",
            "example.com:abc",
            "example.com:+80",
            "example.com:-1",
            "example.com:65536",
            "example.com:99999999999999999999",
            "example.com:80:80",
            "example.com..",
            ".example.com",
            "a..b",
            "exa%6dple.com",
            "exämple.com",
            "example.com/",
            "example.com/path",
            "example.com\\",
            "::1",
            "[::1",
            "::1]",
            "[]",
            "[::1]x",
            "[::1]:x",
            "[::1]:99999",
            "[::1].",
            "[fe80::1%25eth0]",
            "[fe80::1%eth0]",
            "[example.com]",
            "[127.0.0.1]",
            "[::1]]",
            "[[::1]]",
            long_label.as_str(),
            long_host.as_str(),
        ] {
            assert_eq!(normalise_host(input), None, "{input:?}");
        }
    }

    #[test]
    fn host_length_limits_are_inclusive() {
        let label = "a".repeat(63);
        assert_eq!(normalise_host(&label).as_deref(), Some(label.as_str()));
        let host = ["a"; 127].join(".");
        assert_eq!(host.len(), 253);
        assert_eq!(normalise_host(&host).as_deref(), Some(host.as_str()));
        let with_dot = format!("{host}.");
        assert_eq!(normalise_host(&with_dot).as_deref(), Some(host.as_str()));
    }

    #[test]
    fn normalised_host_is_a_fixed_point() {
        for input in ["Example.COM.:443", "[0::1]:80", "a-b_c.d", "[2001:DB8::A]"] {
            let Some(once) = normalise_host(input) else {
                panic!("{input:?} rejected");
            };
            assert_eq!(normalise_host(&once).as_deref(), Some(&*once));
        }
    }
}
