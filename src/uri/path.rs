//! Request path normalisation: the one canonical form of a request path that both the router
//! and the upstream see.
//!
//! This module owns percent-escape handling, the refusal of encodings that smuggle separators
//! past a router (encoded `/`, `\`, NUL, double-encoded dots and separators), dot-segment
//! resolution and slash merging. It leaves the query string to the caller (who splits at `?`
//! first), route matching to [`crate::proxy::route`], and turning a [`PathError`] into a response to
//! the HTTP layer. Pure code: no IO, no logging.
//!
//! The output is always ASCII, starts with `/`, contains no empty segment except a trailing
//! one, no `.` or `..` segment, no escape of an unreserved character, and only uppercase
//! escapes; normalising it again returns it unchanged.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused. Every variant is a client error: the path is either malformed or
/// looks like an attempt to make the gateway and the upstream disagree about what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathError {
    /// The path is not empty and does not start with `/`.
    NotAbsolute,
    /// A `%` is not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C` (any case): an encoded `/` or `\`.
    EncodedSeparator,
    /// `%00`: an encoded NUL.
    EncodedNul,
    /// `%25` followed by `2E`, `2F` or `5C` (any case, any depth of `25` nesting): a
    /// double-encoded dot, slash or backslash.
    DoubleEncoded,
    /// A raw `\`.
    Backslash,
    /// A raw control character (below 0x20, or 0x7F) or a raw space.
    InvalidByte,
    /// A segment starting with `.;` or `..;` (or the `%3B` spelling of the same), the
    /// path-parameter trick some servers resolve as `.` or `..`.
    PathParameterSegment,
    /// A `..` segment with nothing left to remove: the path climbs above the root.
    ClimbsAboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path does not start with '/'",
            PathError::BadEscape => "path has a '%' not followed by two hex digits",
            PathError::EncodedSeparator => "path contains an encoded '/' or '\\'",
            PathError::EncodedNul => "path contains an encoded NUL",
            PathError::DoubleEncoded => "path contains a double-encoded '.', '/' or '\\'",
            PathError::Backslash => "path contains a backslash",
            PathError::InvalidByte => "path contains a control character or a space",
            PathError::PathParameterSegment => "path has a segment starting with '.;' or '..;'",
            PathError::ClimbsAboveRoot => "path climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises the path part of a request target (no query string; the caller splits at `?`).
///
/// Returns the canonical path, which always starts with `/` (an empty input gives `"/"`).
///
/// # Errors
///
/// Returns the reason the path is refused (see [`PathError`]). A refused path must not be
/// forwarded in any form: the errors describe inputs that different servers are known to
/// interpret differently.
pub fn normalise(path: &str) -> Result<String, PathError> {
    normalise_cow(path).map(Cow::into_owned)
}

/// [`normalise`] without a copy when the path is already canonical (the proxy's hot path).
///
/// # Errors
///
/// As [`normalise`].
pub fn normalise_cow(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Almost every real request path is already canonical; checking that is one cheap scan
    // and saves building and resolving a copy.
    if path.bytes().all(|b| b == b'/' || is_pchar_literal(b)) && segments_are_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    // Paths with escapes but no dot or empty segments are common too: one allocation.
    if segments_are_canonical(&decoded) {
        return Ok(Cow::Owned(decoded));
    }
    resolve_segments(&decoded).map(Cow::Owned)
}

/// True when `path` (starting with `/`) has nothing for [`resolve_segments`] to do: no empty
/// segment except a trailing one, no `.` or `..` segment and no segment it would refuse.
fn segments_are_canonical(path: &str) -> bool {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        // An empty segment is only canonical as the last one (a trailing slash); anywhere
        // else it comes from `//`, which is merged.
        if segment.is_empty() && segments.peek().is_some() {
            return false;
        }
        if segment == "." || segment == ".." || is_path_parameter_trick(segment) {
            return false;
        }
    }
    true
}

/// The single decode/validate pass: decodes escapes of unreserved characters, uppercases the
/// other escapes, encodes bytes that may not appear raw in a path and refuses the rest.
fn decode(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    let mut saw_escaped_percent = false;
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex_value);
                let lo = bytes.next().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                match (hi << 4) | lo {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        saw_escaped_percent |= v == b'%';
                        push_escape(&mut out, v);
                    }
                }
            }
            b'\\' => return Err(PathError::Backslash),
            b' ' | 0x7F => return Err(PathError::InvalidByte),
            b if b < 0x20 => return Err(PathError::InvalidByte),
            b if b == b'/' || is_pchar_literal(b) => out.push(char::from(b)),
            // Gen-delims, other ASCII punctuation and every byte of a non-ASCII character:
            // encoding them keeps the meaning and leaves the upstream nothing to guess.
            b => push_escape(&mut out, b),
        }
    }
    // Checked on the output rather than the input: `%25%32%45` only becomes `%252E` once
    // `%32` and `%45` are decoded, and the output is what the upstream will decode.
    if saw_escaped_percent && has_nested_encoded_separator(&out) {
        return Err(PathError::DoubleEncoded);
    }
    Ok(out)
}

/// True when `s` (decoded, escapes uppercase) has `%25`, then any number of `25`, then `2E`,
/// `2F` or `5C` in any case: a dot or separator that appears after the upstream decodes more
/// than once. Deeper nesting is refused too because it is the same trick one decode later.
fn has_nested_encoded_separator(s: &str) -> bool {
    let mut rest = s;
    while let Some(at) = rest.find("%25") {
        rest = rest.get(at + 3..).unwrap_or_default();
        let mut tail = rest;
        while let Some(pair) = tail.get(..2) {
            if pair.eq_ignore_ascii_case("2e")
                || pair.eq_ignore_ascii_case("2f")
                || pair.eq_ignore_ascii_case("5c")
            {
                return true;
            }
            if pair != "25" {
                break;
            }
            tail = tail.get(2..).unwrap_or_default();
        }
    }
    false
}

/// Merges empty segments and resolves `.` and `..` as RFC 3986 §5.2.4, refusing a `..` that
/// would remove the root and the `.;`/`..;` segments. `path` is the output of [`decode`].
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    // Whether the result ends with `/`: after an empty last segment, and after a final `.` or
    // `..`, which name a directory (`/a/.` is `/a/`, `/a/..` is `/`).
    let mut trailing_slash = false;
    for segment in path.split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::ClimbsAboveRoot)?;
                out.truncate(parent);
                trailing_slash = true;
            }
            s if is_path_parameter_trick(s) => return Err(PathError::PathParameterSegment),
            s => {
                out.push('/');
                out.push_str(s);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Segments such as `..;x` are `..` to servers that strip path parameters (Tomcat and
/// friends) but an ordinary name to the router. The `%3B` spelling is refused as well, for
/// servers that decode before stripping; escapes are uppercase by the time this runs.
fn is_path_parameter_trick(segment: &str) -> bool {
    let after_dots = segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'));
    after_dots.is_some_and(|rest| rest.starts_with(';') || rest.starts_with("%3B"))
}

/// RFC 3986 `unreserved`: the characters whose escapes are decoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `pct-encoded`: bytes allowed raw in a path segment.
fn is_pchar_literal(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(hex_digit(b >> 4));
    out.push(hex_digit(b & 0x0F));
}

/// Uppercase hex digit of the low nibble of `n`.
fn hex_digit(n: u8) -> char {
    let n = n & 0x0F;
    char::from(if n < 10 { b'0' + n } else { b'A' + (n - 10) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str, expected: &str) {
        assert_eq!(normalise(input).as_deref(), Ok(expected), "input {input:?}");
    }

    fn err(input: &str, expected: PathError) {
        assert_eq!(normalise(input), Err(expected), "input {input:?}");
    }

    #[test]
    fn empty_is_root_and_root_is_unchanged() {
        ok("", "/");
        ok("/", "/");
    }

    #[test]
    fn must_be_absolute() {
        err("a", PathError::NotAbsolute);
        err("a/b", PathError::NotAbsolute);
        err(".", PathError::NotAbsolute);
        err("%2F", PathError::NotAbsolute);
        err("*", PathError::NotAbsolute);
        err("http://example.com/", PathError::NotAbsolute);
    }

    #[test]
    fn canonical_paths_are_unchanged() {
        for p in [
            "/a",
            "/a/b/",
            "/a/b/c.txt",
            "/...",
            "/a/.../b",
            "/.hidden",
            "/a..b/..c",
            "/a;b",
            "/a;b=c/d",
            "/;/x",
            "/~user/x-y_z",
            "/!$&'()*+,;=:@",
            "/%3A",
            "/%20",
            "/%C3%A9",
            "/%2541",
        ] {
            ok(p, p);
        }
    }

    #[test]
    fn decodes_unreserved_in_any_case() {
        ok("/%41%42%43", "/ABC");
        ok("/%61%7a", "/az");
        ok("/%30%39", "/09");
        ok("/%2D%2d%5F%5f%7E%7e", "/--__~~");
        ok("/a%2eb", "/a.b");
        ok("/%7Euser", "/~user");
    }

    #[test]
    fn keeps_other_escapes_but_uppercases_them() {
        ok("/%3a", "/%3A");
        ok("/%3A", "/%3A");
        ok("/a%3bb", "/a%3Bb");
        ok("/%c3%a9", "/%C3%A9");
        ok("/%20x", "/%20x");
        ok("/%ff", "/%FF");
        ok("/%01", "/%01");
        ok("/%7f", "/%7F");
        ok("/%25", "/%25");
        ok("/%3f%23", "/%3F%23");
    }

    #[test]
    fn bad_escapes_are_refused() {
        err("/%", PathError::BadEscape);
        err("/%4", PathError::BadEscape);
        err("/a%", PathError::BadEscape);
        err("/%g0", PathError::BadEscape);
        err("/%0g", PathError::BadEscape);
        err("/%%41", PathError::BadEscape);
        err("/% 1", PathError::BadEscape);
        err("/%-1", PathError::BadEscape);
        err("/%é", PathError::BadEscape);
    }

    #[test]
    fn encoded_separators_and_nul_are_refused() {
        err("/%2F", PathError::EncodedSeparator);
        err("/a%2fb", PathError::EncodedSeparator);
        err("/%5C", PathError::EncodedSeparator);
        err("/a%5cb", PathError::EncodedSeparator);
        err("/..%2F..%2Fetc", PathError::EncodedSeparator);
        err("/%00", PathError::EncodedNul);
        err("/a.txt%00.jpg", PathError::EncodedNul);
    }

    #[test]
    fn double_encoded_dot_and_separators_are_refused() {
        for p in [
            "/%252E",
            "/%252e",
            "/%252F",
            "/%252f",
            "/%255C",
            "/%255c",
            "/a%252e%252e/b",
        ] {
            err(p, PathError::DoubleEncoded);
        }
        // Appears only once the unreserved `%32`/`%45`/`%65` are decoded.
        err("/%25%32%45", PathError::DoubleEncoded);
        err("/%25%32e", PathError::DoubleEncoded);
        err("/%252%65", PathError::DoubleEncoded);
        // Triple and deeper encodings are the same trick.
        err("/%25252E", PathError::DoubleEncoded);
        err("/%2525252f", PathError::DoubleEncoded);
        // Refused even inside a segment that `..` would remove afterwards.
        err("/%252e/../x", PathError::DoubleEncoded);
    }

    #[test]
    fn other_double_encodings_are_kept() {
        ok("/%2541", "/%2541");
        ok("/%2520", "/%2520");
        ok("/%253a", "/%253a");
        ok("/%2525", "/%2525");
        ok("/%252", "/%252");
        ok("/%25/2E", "/%25/2E");
        ok("/%25%2E", "/%25.");
        ok("/%25%3a", "/%25%3A");
        ok("/%2525x2E", "/%2525x2E");
    }

    #[test]
    fn raw_backslash_is_refused() {
        err("/\\", PathError::Backslash);
        err("/a\\b", PathError::Backslash);
        err("/..\\..\\windows", PathError::Backslash);
        err("\\", PathError::NotAbsolute);
    }

    #[test]
    fn control_characters_and_space_are_refused() {
        for b in (0u8..0x20).chain([0x7F, b' ']) {
            let p = format!("/a{}b", char::from(b));
            err(&p, PathError::InvalidByte);
        }
        err("/a\r\nHost: evil", PathError::InvalidByte);
    }

    #[test]
    fn bytes_outside_pchar_are_encoded() {
        ok("/\"<>^`{|}", "/%22%3C%3E%5E%60%7B%7C%7D");
        ok("/[::1]", "/%5B::1%5D");
        ok("/a#b", "/a%23b");
        ok("/a?b", "/a%3Fb");
        ok("/é", "/%C3%A9");
        ok("/日本", "/%E6%97%A5%E6%9C%AC");
        ok("/🦀", "/%F0%9F%A6%80");
    }

    #[test]
    fn repeated_slashes_are_merged() {
        ok("//", "/");
        ok("///", "/");
        ok("//a///b", "/a/b");
        ok("/a//", "/a/");
        ok("/a//b//", "/a/b/");
        ok("//a//..//b", "/b");
    }

    #[test]
    fn dot_segments_are_resolved() {
        ok("/.", "/");
        ok("/./", "/");
        ok("/./a", "/a");
        ok("/a/.", "/a/");
        ok("/a/./", "/a/");
        ok("/a/./b", "/a/b");
        ok("/a/..", "/");
        ok("/a/../", "/");
        ok("/a/b/..", "/a/");
        ok("/a/b/../c", "/a/c");
        ok("/a/b/../../c", "/c");
        ok("/a/./b/./../c/.", "/a/c/");
        ok("/a/b/c/./../../g", "/a/g");
        ok("/a//..", "/");
    }

    #[test]
    fn encoded_dots_count_as_dots() {
        ok("/a/%2e", "/a/");
        ok("/a/%2E%2E", "/");
        ok("/a/%2e./b", "/b");
        ok("/a/.%2E/b", "/b");
        ok("/a/b/%2e%2e/c", "/a/c");
        err("/%2e%2e", PathError::ClimbsAboveRoot);
        err("/%2E%2E/etc/passwd", PathError::ClimbsAboveRoot);
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        err("/..", PathError::ClimbsAboveRoot);
        err("/../", PathError::ClimbsAboveRoot);
        err("/../a", PathError::ClimbsAboveRoot);
        err("/a/../..", PathError::ClimbsAboveRoot);
        err("/a/b/../../../c", PathError::ClimbsAboveRoot);
        err("/./..", PathError::ClimbsAboveRoot);
        err("//..", PathError::ClimbsAboveRoot);
        err("/../../../../etc/passwd", PathError::ClimbsAboveRoot);
    }

    #[test]
    fn trailing_slash_is_preserved() {
        ok("/a/b/", "/a/b/");
        ok("/a/b", "/a/b");
        ok("/a/b/c/../", "/a/b/");
    }

    #[test]
    fn path_parameter_segments_are_refused() {
        for p in [
            "/..;/admin",
            "/.;/x",
            "/a/..;/b",
            "/a/.;x/b",
            "/..;",
            "/.;",
            "/..;jsessionid=1/admin",
            "/%2e%2e;/admin",
            "/%2E;/x",
            "/.%2e;/x",
            "/..%3b/admin",
            "/.%3B/x",
        ] {
            err(p, PathError::PathParameterSegment);
        }
    }

    #[test]
    fn semicolons_elsewhere_are_fine() {
        ok("/a;b", "/a;b");
        ok("/a;b/c", "/a;b/c");
        ok("/...;/x", "/...;/x");
        ok("/x.;", "/x.;");
        ok("/;..", "/;..");
        ok("/a/b;/../c", "/a/c");
        ok("/...", "/...");
        ok("/a/.../..", "/a/");
    }

    #[test]
    fn output_is_owned_copy_of_canonical_input() {
        let input = "/api/v1/things";
        let out = normalise(input);
        assert_eq!(out.as_deref(), Ok(input));
    }

    #[test]
    fn errors_display_short_messages() {
        assert_eq!(
            PathError::ClimbsAboveRoot.to_string(),
            "path climbs above the root"
        );
        let all = [
            PathError::NotAbsolute,
            PathError::BadEscape,
            PathError::EncodedSeparator,
            PathError::EncodedNul,
            PathError::DoubleEncoded,
            PathError::Backslash,
            PathError::InvalidByte,
            PathError::PathParameterSegment,
            PathError::ClimbsAboveRoot,
        ];
        for e in all {
            let msg = e.to_string();
            assert!(msg.starts_with("path "), "{msg}");
            let _: &dyn std::error::Error = &e;
        }
    }

    #[test]
    fn hostile_inputs() {
        err("/%2e%2e%2f%2e%2e%2fetc/passwd", PathError::EncodedSeparator);
        err("/..%5c..%5cwindows", PathError::EncodedSeparator);
        err("/static/..;/..;/admin", PathError::PathParameterSegment);
        err("/a/%252e%252e/admin", PathError::DoubleEncoded);
        err("/a\0b", PathError::InvalidByte);
        err("/a%00", PathError::EncodedNul);
        // Encoded CR/LF are data to the upstream, not header breaks: kept encoded.
        ok("/a%0d%0a", "/a%0D%0A");
        // Overlong UTF-8 for '.' is not a dot: it stays encoded and cannot climb.
        ok("/a/%c0%ae%c0%ae/b", "/a/%C0%AE%C0%AE/b");
        ok("/a/%C0%AE%C0%AE", "/a/%C0%AE%C0%AE");
        // A long run of `..` is refused, not clamped; a balanced one resolves.
        let deep = format!("/{}", "a/".repeat(1000)) + &"../".repeat(1000);
        ok(&deep, "/");
        let deeper = deep + "../";
        err(&deeper, PathError::ClimbsAboveRoot);
        let slashes = "/".repeat(10_000);
        ok(&slashes, "/");
    }

    #[test]
    fn shortcuts_agree_with_full_resolution() {
        for p in [
            "/", "/a", "/a/", "/a/b", "/...", "/a;b", "/a//b", "/./a", "/a/..", "/..;/a", "/%41",
            "/a b", "/é", "/%3a/b/", "/%2e/a", "/a%2F",
        ] {
            assert_eq!(normalise(p), full_resolution(p), "input {p:?}");
        }
    }

    /// `normalise` without its shortcuts, to check that they change nothing.
    fn full_resolution(path: &str) -> Result<String, PathError> {
        decode(path).and_then(|d| resolve_segments(&d))
    }

    /// Every accepted path satisfies the output invariants, and normalising it again is a
    /// no-op. Inputs are all sequences of up to four pieces from an alphabet chosen to hit
    /// every rule and their interactions.
    #[test]
    fn idempotent_over_generated_inputs() {
        const PIECES: [&str; 20] = [
            "/", "//", ".", "..", "%2e", "%2E", "a", "%41", "%3a", ";", "%25", "2e", "5C", "%32",
            "~", "é", "<", "%", "\\", "..;",
        ];
        let mut accepted = 0usize;
        generate(&mut String::from("/"), &PIECES, 4, &mut accepted);
        assert!(accepted > 10_000, "only {accepted} inputs accepted");
    }

    fn generate(input: &mut String, pieces: &[&str], depth: usize, accepted: &mut usize) {
        check_idempotent(input, accepted);
        if depth == 0 {
            return;
        }
        for piece in pieces {
            let len = input.len();
            input.push_str(piece);
            generate(input, pieces, depth - 1, accepted);
            input.truncate(len);
        }
    }

    fn check_idempotent(input: &str, accepted: &mut usize) {
        let result = normalise(input);
        assert_eq!(
            result,
            full_resolution(input),
            "shortcut differs for {input:?}"
        );
        if let Ok(once) = result {
            *accepted += 1;
            assert!(once.starts_with('/'), "{input:?} -> {once:?}");
            assert!(once.is_ascii(), "{input:?} -> {once:?}");
            assert!(!once.contains("//"), "{input:?} -> {once:?}");
            assert!(!once.contains('\\'), "{input:?} -> {once:?}");
            assert!(
                !once.split('/').any(|s| s == "." || s == ".."),
                "{input:?} -> {once:?}"
            );
            assert_eq!(
                normalise(&once).as_deref(),
                Ok(once.as_str()),
                "not idempotent for {input:?}"
            );
        }
    }

    #[test]
    fn idempotent_over_listed_inputs() {
        for p in [
            "",
            "/",
            "//a///b",
            "/a/./b/../c/",
            "/%7e%41%2d",
            "/%3a%3A",
            "/%2541",
            "/%25%32",
            "/%25%32%41",
            "/é/ü",
            "/\"quoted\"",
            "/a;b/..x",
            "/%2E%2E%2E",
            "/a/%2e%2e%2e/..",
            "/x/%25/..",
        ] {
            let once = normalise(p);
            if let Ok(once) = once {
                assert_eq!(normalise(&once).as_deref(), Ok(once.as_str()), "{p:?}");
            }
        }
    }

    /// Pseudo-random bytes (a fixed LCG, so failures reproduce) never panic, and whatever is
    /// accepted is idempotent.
    #[test]
    fn random_inputs_never_panic() {
        const ALPHABET: &[u8] = b"/.%2eEfF5cC0aA;\\ x~";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut s = String::from("/");
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let len = (state >> 59) as usize;
            for _ in 0..len {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let pick = ((state >> 33) as usize) % ALPHABET.len();
                if let Some(&b) = ALPHABET.get(pick) {
                    s.push(char::from(b));
                }
            }
            if let Ok(once) = normalise(&s) {
                assert_eq!(normalise(&once).as_deref(), Ok(once.as_str()), "{s:?}");
            }
        }
    }
}
